//! Route synthesis for the sidecar (sans-IO): the queue view an SDK gets for a topic, and the
//! mapping of the queue ids it then uses back to real brokers.
//!
//! Every broker address in a route answer is the sidecar's own, so an SDK's requests all come
//! back to the sidecar on one connection, and a legacy request (SEND, PULL) does not say which
//! broker the SDK meant (4.x headers carry a queue id, not a broker name). So the sidecar presents
//! one **virtual broker** per answer whose queues are the concatenation of the real brokers':
//!
//! ```text
//! writable masters, by name:  broker-a (4 write queues)  broker-b (8 write queues)
//! virtual write queues:       0..4 -> broker-a 0..4      4..12 -> broker-b 0..8
//! ```
//!
//! A send to virtual queue 5 goes to broker-b queue 1, deterministically, so per-queue ordering
//! (orderly producers hashing a key to a queue) survives the proxy, and the SDK's round-robin over
//! queues spreads sends over writable brokers in proportion to their queues. Reads use their own
//! concatenation over readable masters. The real brokers are listed in `brokerDatas` too (at the
//! sidecar's address, without queues), because Pop clients find the broker for an ACK by the
//! broker name inside the pop handle.
//!
//! **Write weights.** When a writable broker carries a weight (Envoy's `load_balancing_weight`,
//! set by the control plane's traffic policy), the write space is instead
//! [`WEIGHTED_WRITE_QUEUES`] slots (or more, when the brokers have more queues) dealt to the
//! brokers by smooth weighted round robin, each slot naming one of its broker's queues in turn:
//!
//! ```text
//! weights a=3, b=1 (4 write queues each):  slot 0->a0 1->a1 2->b0 3->a2 4->a3 5->a0 6->b1 ...
//! ```
//!
//! An SDK's round robin over the slots then follows the weights (to 1 %), and a producer that
//! picks its queue keeps its broker as long as the weights stay the same.

use std::collections::BTreeMap;

use crate::codec::body::{perm, BrokerData, QueueData, TopicRouteData};

/// One broker master as route synthesis sees it (from endpoint metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerView {
    pub name: String,
    pub cluster: String,
    /// RocketMQ perm of the topic on this broker.
    pub perm: i32,
    pub read_queues: u32,
    pub write_queues: u32,
    /// Write weight (None: by queue count, or 1 when another broker has a weight).
    pub weight: Option<u32>,
}

/// A contiguous run of virtual queue ids served by one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    broker: String,
    start: u32,
    len: u32,
}

/// Most virtual queues presented per direction (protects SDKs from absurd endpoint metadata).
pub const MAX_VIRTUAL_QUEUES: u32 = 1024;

/// Fewest virtual write queues of a weighted topic: weights resolve to 1 %.
pub const WEIGHTED_WRITE_QUEUES: u32 = 100;

/// The virtual queue space of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualQueues {
    write: Vec<Span>,
    read: Vec<Span>,
    /// Set when writes are weighted: replaces `write`.
    weighted: Option<Weighted>,
}

/// A weighted write space: slot -> (broker index, that broker's queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Weighted {
    brokers: Vec<String>,
    slots: Vec<(usize, i32)>,
}

impl Weighted {
    /// Deals `n` slots by smooth weighted round robin (each turn every broker gains its weight,
    /// the one ahead takes the slot and pays the total back), so every window of slots is close
    /// to the weights, not only the whole.
    fn new(brokers: &[(&str, u32, u32)]) -> Option<Self> {
        let total: u64 = brokers.iter().map(|b| u64::from(b.1)).sum();
        if total == 0 {
            return None;
        }
        let queues: u32 = brokers.iter().map(|b| b.2).sum();
        let n = WEIGHTED_WRITE_QUEUES.max(queues).min(MAX_VIRTUAL_QUEUES);
        let mut current = vec![0i64; brokers.len()];
        let mut used = vec![0u32; brokers.len()];
        let mut slots = Vec::with_capacity(n as usize);
        for _ in 0..n {
            for (c, b) in current.iter_mut().zip(brokers) {
                *c += i64::from(b.1);
            }
            let Some(pick) = (0..brokers.len()).max_by_key(|&i| (current[i], usize::MAX - i))
            else {
                break;
            };
            current[pick] -= total as i64;
            slots.push((pick, (used[pick] % brokers[pick].2.max(1)) as i32));
            used[pick] += 1;
        }
        Some(Weighted {
            brokers: brokers.iter().map(|b| b.0.to_owned()).collect(),
            slots,
        })
    }
}

fn spans<'a>(brokers: impl Iterator<Item = (&'a str, u32)>) -> Vec<Span> {
    let mut sorted: Vec<(&str, u32)> = brokers.filter(|(_, n)| *n > 0).collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut out = Vec::with_capacity(sorted.len());
    let mut start = 0u32;
    for (name, n) in sorted {
        let len = n.min(MAX_VIRTUAL_QUEUES - start.min(MAX_VIRTUAL_QUEUES));
        if len == 0 {
            break;
        }
        out.push(Span {
            broker: name.to_owned(),
            start,
            len,
        });
        start += len;
    }
    out
}

fn lookup(spans: &[Span], q: i32) -> Option<(&str, i32)> {
    let q = u32::try_from(q).ok()?;
    let s = spans.iter().find(|s| q >= s.start && q < s.start + s.len)?;
    Some((&s.broker, (q - s.start) as i32))
}

fn reverse(spans: &[Span], broker: &str, local: i32) -> Option<i32> {
    let local = u32::try_from(local).ok()?;
    let s = spans.iter().find(|s| s.broker == broker && local < s.len)?;
    Some((s.start + local) as i32)
}

impl VirtualQueues {
    /// Builds the space from broker masters (duplicate names keep the first).
    pub fn new(brokers: &[BrokerView]) -> Self {
        let mut writable: Vec<&BrokerView> = brokers
            .iter()
            .filter(|b| perm::is_writable(b.perm) && b.write_queues > 0)
            .collect();
        writable.sort_by(|a, b| a.name.cmp(&b.name));
        writable.dedup_by(|a, b| a.name == b.name);
        let weighted = if writable.iter().any(|b| b.weight.is_some()) {
            let w: Vec<(&str, u32, u32)> = writable
                .iter()
                .map(|b| (b.name.as_str(), b.weight.unwrap_or(1), b.write_queues))
                .filter(|b| b.1 > 0)
                .collect();
            Weighted::new(&w)
        } else {
            None
        };
        VirtualQueues {
            weighted,
            write: spans(
                brokers
                    .iter()
                    .filter(|b| perm::is_writable(b.perm))
                    .map(|b| (b.name.as_str(), b.write_queues)),
            ),
            read: spans(
                brokers
                    .iter()
                    .filter(|b| perm::is_readable(b.perm))
                    .map(|b| (b.name.as_str(), b.read_queues)),
            ),
        }
    }

    pub fn write_queue_nums(&self) -> u32 {
        if let Some(w) = &self.weighted {
            return w.slots.len() as u32;
        }
        self.write.last().map_or(0, |s| s.start + s.len)
    }

    /// Whether writes are dealt by weight (see the module docs).
    pub fn is_weighted(&self) -> bool {
        self.weighted.is_some()
    }

    pub fn read_queue_nums(&self) -> u32 {
        self.read.last().map_or(0, |s| s.start + s.len)
    }

    /// The broker and its queue id behind virtual write queue `q`.
    pub fn write_target(&self, q: i32) -> Option<(&str, i32)> {
        if let Some(w) = &self.weighted {
            let (b, local) = *w.slots.get(usize::try_from(q).ok()?)?;
            return Some((&w.brokers[b], local));
        }
        lookup(&self.write, q)
    }

    /// The broker and its queue id behind virtual read queue `q`.
    pub fn read_target(&self, q: i32) -> Option<(&str, i32)> {
        lookup(&self.read, q)
    }

    /// The virtual write queue of (broker, queue), e.g. to re-stamp a send result.
    pub fn virtual_write(&self, broker: &str, local: i32) -> Option<i32> {
        if let Some(w) = &self.weighted {
            let b = w.brokers.iter().position(|n| n == broker)?;
            return w
                .slots
                .iter()
                .position(|s| *s == (b, local))
                .map(|i| i as i32);
        }
        reverse(&self.write, broker, local)
    }

    /// The virtual read queue of (broker, queue), e.g. to re-stamp popped records.
    pub fn virtual_read(&self, broker: &str, local: i32) -> Option<i32> {
        reverse(&self.read, broker, local)
    }

    /// Writable brokers in virtual-queue order.
    pub fn writable_brokers(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.weighted {
            Some(w) => Box::new(
                w.brokers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| w.slots.iter().any(|s| s.0 == *i))
                    .map(|(_, b)| b.as_str()),
            ),
            None => Box::new(self.write.iter().map(|s| s.broker.as_str())),
        }
    }

    /// Readable brokers in virtual-queue order.
    pub fn readable_brokers(&self) -> impl Iterator<Item = &str> {
        self.read.iter().map(|s| s.broker.as_str())
    }
}

/// The route answer for a topic: one virtual broker `virtual_name` holding the virtual queues,
/// plus every real broker (no queues) so pop handles resolve; every address is `advertise`.
///
/// Fixes against Envoy's filter: one queueData (not one per host, so a master and its slave do
/// not duplicate queues), brokerDatas grouped by name with no leaked fields, perms from metadata
/// rather than defaulted to 0, and a topic with no readable/writable broker gets 0 queues in that
/// direction instead of phantom ones.
pub fn topic_route_data(
    brokers: &[BrokerView],
    queues: &VirtualQueues,
    virtual_name: &str,
    advertise: &str,
) -> TopicRouteData {
    let cluster = brokers
        .first()
        .map(|b| b.cluster.clone())
        .unwrap_or_default();
    let (r, w) = (queues.read_queue_nums(), queues.write_queue_nums());
    let mut p = 0;
    if r > 0 {
        p |= perm::PERM_READ;
    }
    if w > 0 {
        p |= perm::PERM_WRITE;
    }
    let mut broker_datas: BTreeMap<&str, BrokerData> = BTreeMap::new();
    let names = std::iter::once((virtual_name, cluster.as_str())).chain(
        brokers
            .iter()
            .map(|b| (b.name.as_str(), b.cluster.as_str())),
    );
    for (name, cluster) in names {
        broker_datas.entry(name).or_insert_with(|| BrokerData {
            broker_addrs: BTreeMap::from([(BrokerData::MASTER_ID, advertise.to_owned())]),
            broker_name: name.to_owned(),
            cluster: cluster.to_owned(),
            ..BrokerData::default()
        });
    }
    TopicRouteData {
        queue_datas: vec![QueueData {
            broker_name: virtual_name.to_owned(),
            perm: p,
            read_queue_nums: r as i32,
            write_queue_nums: w as i32,
            topic_sys_flag: 0,
        }],
        broker_datas: broker_datas.into_values().collect(),
        ..TopicRouteData::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, perm: i32, r: u32, w: u32) -> BrokerView {
        BrokerView {
            name: name.into(),
            cluster: "C".into(),
            perm,
            read_queues: r,
            write_queues: w,
            weight: None,
        }
    }

    fn weighted(name: &str, w: u32) -> BrokerView {
        BrokerView {
            weight: Some(w),
            ..b(name, 6, 4, 4)
        }
    }

    fn shares(vq: &VirtualQueues, window: std::ops::Range<i32>) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for q in window {
            let (b, _) = vq.write_target(q).unwrap();
            *out.entry(b.to_owned()).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn weights_deal_slots_smoothly_and_stably() {
        let vq = VirtualQueues::new(&[weighted("a", 90), weighted("b", 10)]);
        assert!(vq.is_weighted());
        assert_eq!(vq.write_queue_nums(), WEIGHTED_WRITE_QUEUES);
        let all = shares(&vq, 0..100);
        assert_eq!((all["a"], all["b"]), (90, 10));
        // Every window of 20 slots is within one slot of the weights.
        for start in 0..80 {
            let w = shares(&vq, start..start + 20);
            assert!((1..=3).contains(w.get("b").unwrap_or(&0)), "{start}: {w:?}");
        }
        // Each broker's queues are used in turn; the mapping is a function of the weights.
        assert_eq!(vq.write_target(0), Some(("a", 0)));
        assert_eq!(
            vq,
            VirtualQueues::new(&[weighted("b", 10), weighted("a", 90)])
        );
        let slot = vq.virtual_write("b", 1).unwrap();
        assert_eq!(vq.write_target(slot), Some(("b", 1)));
        // Reads are not weighted.
        assert_eq!(vq.read_queue_nums(), 8);
        // 0 / 100: one broker takes every write; 50 / 50 halves them.
        let vq = VirtualQueues::new(&[weighted("a", 0), weighted("b", 100)]);
        assert_eq!(shares(&vq, 0..100).get("a"), None);
        assert_eq!(vq.writable_brokers().collect::<Vec<_>>(), ["b"]);
        let vq = VirtualQueues::new(&[weighted("a", 50), weighted("b", 50)]);
        assert_eq!(shares(&vq, 0..10)["a"], 5);
        // A writable broker without a weight counts as 1, as in Envoy.
        let vq = VirtualQueues::new(&[weighted("a", 3), b("b", 6, 4, 4)]);
        assert_eq!(shares(&vq, 0..100)["b"], 25);
    }

    #[test]
    fn queues_concatenate_by_broker_name() {
        let vq = VirtualQueues::new(&[
            b("broker-b", 6, 8, 8),
            b("broker-a", 6, 4, 4),
            b("broker-c", 4, 2, 2),
        ]);
        assert_eq!(vq.write_queue_nums(), 12);
        assert_eq!(vq.read_queue_nums(), 14);
        assert_eq!(vq.write_target(0), Some(("broker-a", 0)));
        assert_eq!(vq.write_target(5), Some(("broker-b", 1)));
        assert_eq!(vq.write_target(12), None);
        assert_eq!(vq.write_target(-1), None);
        assert_eq!(vq.read_target(13), Some(("broker-c", 1)));
        assert_eq!(vq.virtual_read("broker-c", 1), Some(13));
        assert_eq!(
            vq.virtual_write("broker-c", 0),
            None,
            "read-only broker takes no writes"
        );
        assert_eq!(vq.virtual_write("broker-b", 8), None);
        assert_eq!(
            vq.writable_brokers().collect::<Vec<_>>(),
            vec!["broker-a", "broker-b"]
        );
    }

    #[test]
    fn round_trips_for_every_queue() {
        let vq = VirtualQueues::new(&[b("x", 6, 3, 5), b("y", 6, 7, 2)]);
        for q in 0..vq.write_queue_nums() as i32 {
            let (broker, local) = vq.write_target(q).unwrap();
            assert_eq!(vq.virtual_write(broker, local), Some(q));
        }
        for q in 0..vq.read_queue_nums() as i32 {
            let (broker, local) = vq.read_target(q).unwrap();
            assert_eq!(vq.virtual_read(broker, local), Some(q));
        }
    }

    #[test]
    fn huge_metadata_is_capped() {
        let vq = VirtualQueues::new(&[b("x", 6, u32::MAX, u32::MAX), b("y", 6, 5, 5)]);
        assert_eq!(vq.write_queue_nums(), MAX_VIRTUAL_QUEUES);
        assert_eq!(
            vq.write_target(MAX_VIRTUAL_QUEUES as i32 - 1),
            Some(("x", MAX_VIRTUAL_QUEUES as i32 - 1))
        );
    }

    #[test]
    fn route_data_has_one_queue_entry_and_every_broker() {
        let brokers = [b("broker-a", 6, 4, 4), b("broker-b", 4, 8, 8)];
        let vq = VirtualQueues::new(&brokers);
        let rd = topic_route_data(&brokers, &vq, "rocketmesh", "127.0.0.1:9876");
        assert_eq!(rd.queue_datas.len(), 1);
        let q = &rd.queue_datas[0];
        assert_eq!(
            (
                q.broker_name.as_str(),
                q.perm,
                q.read_queue_nums,
                q.write_queue_nums
            ),
            ("rocketmesh", 6, 12, 4)
        );
        let names: Vec<&str> = rd
            .broker_datas
            .iter()
            .map(|b| b.broker_name.as_str())
            .collect();
        assert_eq!(names, vec!["broker-a", "broker-b", "rocketmesh"]);
        assert!(rd
            .broker_datas
            .iter()
            .all(|b| b.master_addr() == Some("127.0.0.1:9876") && b.broker_addrs.len() == 1));
        // Read-only everywhere: no write queues, no write perm.
        let ro = [b("broker-b", 4, 8, 8)];
        let rd = topic_route_data(
            &ro,
            &VirtualQueues::new(&ro),
            "rocketmesh",
            "127.0.0.1:9876",
        );
        assert_eq!(
            (rd.queue_datas[0].perm, rd.queue_datas[0].write_queue_nums),
            (4, 0)
        );
    }
}
