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

/// The virtual queue space of one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualQueues {
    write: Vec<Span>,
    read: Vec<Span>,
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
        VirtualQueues {
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
        self.write.last().map_or(0, |s| s.start + s.len)
    }

    pub fn read_queue_nums(&self) -> u32 {
        self.read.last().map_or(0, |s| s.start + s.len)
    }

    /// The broker and its queue id behind virtual write queue `q`.
    pub fn write_target(&self, q: i32) -> Option<(&str, i32)> {
        lookup(&self.write, q)
    }

    /// The broker and its queue id behind virtual read queue `q`.
    pub fn read_target(&self, q: i32) -> Option<(&str, i32)> {
        lookup(&self.read, q)
    }

    /// The virtual write queue of (broker, queue), e.g. to re-stamp a send result.
    pub fn virtual_write(&self, broker: &str, local: i32) -> Option<i32> {
        reverse(&self.write, broker, local)
    }

    /// The virtual read queue of (broker, queue), e.g. to re-stamp popped records.
    pub fn virtual_read(&self, broker: &str, local: i32) -> Option<i32> {
        reverse(&self.read, broker, local)
    }

    /// Writable brokers in virtual-queue order.
    pub fn writable_brokers(&self) -> impl Iterator<Item = &str> {
        self.write.iter().map(|s| s.broker.as_str())
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
        }
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
