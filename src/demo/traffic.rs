//! The sample traffic: an SDK's route look-up, sends, pops and acks through the sidecar.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rocketmesh_filters::codec::body::TopicRouteData;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    GetMaxOffsetRequestHeader, OffsetResponseHeader, SendMessageResponseHeader,
};
use rocketmesh_filters::codec::message::UniqIdGenerator;
use rocketmesh_filters::codec::RemotingCommand;

use super::report::Report;
use super::topology::Mesh;
use super::{
    CONSUMER_GROUP, CONSUME_LIMIT, LOCALHOST, MESSAGES, ON_DEMAND_MESSAGES, ON_DEMAND_TOPIC,
    POP_INVISIBLE, POP_POLL, PRODUCER_GROUP, QUEUES, RPC, TOPIC,
};
use crate::remoting::RemotingClient;
use crate::sdk;

/// One message sent.
pub(super) struct Sent {
    pub(super) uniq_key: String,
    pub(super) body: Bytes,
}

/// What producing one topic's sample did.
pub(super) struct Produced {
    pub(super) route: TopicRouteData,
    pub(super) sent: Vec<Sent>,
    /// Virtual write queue (as answered) -> messages.
    pub(super) per_queue: BTreeMap<i32, usize>,
    pub(super) problems: Vec<String>,
}

/// What consuming one topic's sample did.
#[derive(Default)]
pub(super) struct Consumed {
    pub(super) pops: usize,
    pub(super) empty_pops: usize,
    /// Messages per broker named in their pop handles.
    pub(super) per_broker: BTreeMap<String, usize>,
    pub(super) received: usize,
    /// Successful acks on the consuming connection and on the second one.
    pub(super) acked: [usize; 2],
    pub(super) problems: Vec<String>,
}

/// Topics the sidecar's xDS client holds, and its subscription counters, at one moment.
pub(super) struct XdsView {
    pub(super) topics: Vec<String>,
    pub(super) vhost_subscribes: u64,
    pub(super) cluster_subscribes: u64,
}

pub(super) fn xds_view(mesh: &Mesh) -> XdsView {
    let dump = mesh.sidecar.core().xds().config_dump();
    XdsView {
        topics: dump.topics_ready,
        vhost_subscribes: dump.stats.vhost_subscribes,
        cluster_subscribes: dump.stats.cluster_subscribes,
    }
}

pub(super) async fn sample_traffic(mesh: &Mesh) -> Result<Report> {
    let addr = mesh.sidecar.addr;
    let producer = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .with_context(|| format!("connecting to the sidecar at {addr}"))?;
    let consumer = RemotingClient::connect_timeout(addr, RPC, None).await?;
    let acker = RemotingClient::connect_timeout(addr, RPC, None).await?;
    let ids = UniqIdGenerator::new(LOCALHOST, std::process::id(), 0x0D3E_0001);

    let xds_before = xds_view(mesh);
    let main = produce(&producer, TOPIC, MESSAGES, &ids).await?;
    let main_consumed = consume(&consumer, &acker, TOPIC, &main).await;
    let xds_after_main = xds_view(mesh);
    let on_demand = produce(&producer, ON_DEMAND_TOPIC, ON_DEMAND_MESSAGES, &ids).await?;
    let on_demand_consumed = consume(&consumer, &acker, ON_DEMAND_TOPIC, &on_demand).await;
    let xds_after_on_demand = xds_view(mesh);
    for c in [&producer, &consumer, &acker] {
        c.close();
    }

    let mut stored = Vec::new();
    for (name, b) in &mesh.brokers {
        stored.push((name.to_string(), b.addr, max_offsets(b.addr, TOPIC).await?));
    }
    Ok(Report {
        main,
        main_consumed,
        on_demand,
        on_demand_consumed,
        stored,
        xds_before,
        xds_after_main,
        xds_after_on_demand,
        control_plane_topics: mesh.control_plane.catalog.topics(),
    })
}

/// The virtual broker of a route answer: the one with queues.
pub(super) fn virtual_broker(
    route: &TopicRouteData,
) -> Option<&rocketmesh_filters::codec::body::QueueData> {
    route
        .queue_datas
        .iter()
        .find(|q| q.write_queue_nums > 0 || q.read_queue_nums > 0)
}

/// Route look-up, then `n` sends over the virtual write queues, as a round-robin producer does.
pub(super) async fn produce(
    client: &RemotingClient,
    topic: &str,
    n: usize,
    ids: &UniqIdGenerator,
) -> Result<Produced> {
    let route = sdk::route(client, topic, RPC)
        .await
        .with_context(|| format!("route look-up of {topic} through the sidecar"))?
        .with_context(|| format!("the sidecar does not know {topic}"))?;
    let queues = virtual_broker(&route)
        .map(|q| q.write_queue_nums)
        .filter(|&q| q > 0)
        .with_context(|| format!("the route of {topic} has no write queues"))?;
    let mut out = Produced {
        route,
        sent: Vec::with_capacity(n),
        per_queue: BTreeMap::new(),
        problems: Vec::new(),
    };
    for i in 0..n {
        let uniq_key = ids.next_id_now();
        let body = Bytes::from(format!("{topic} sample message {i:03}"));
        let queue = (i % queues as usize) as i32;
        let req = sdk::send_v2(
            PRODUCER_GROUP,
            topic,
            queue,
            queues,
            &uniq_key,
            body.clone(),
        );
        match client.invoke(req, RPC).await {
            Ok(resp) if resp.code() == response_code::SUCCESS => {
                let answered = resp
                    .decode_header::<SendMessageResponseHeader>()
                    .map(|h| h.queue_id)
                    .unwrap_or(queue);
                *out.per_queue.entry(answered).or_default() += 1;
                out.sent.push(Sent { uniq_key, body });
            }
            Ok(resp) => out.problems.push(format!(
                "send {i} to {topic} refused: code {} {}",
                resp.code(),
                resp.remark().unwrap_or_default()
            )),
            Err(e) => out
                .problems
                .push(format!("send {i} to {topic} failed: {e}")),
        }
    }
    Ok(out)
}

/// POP with queueId -1 until every sent message arrived (or the deadline), checking each is one
/// of ours, seen once, with its body; acks alternate between `consumer` and `acker`.
pub(super) async fn consume(
    consumer: &RemotingClient,
    acker: &RemotingClient,
    topic: &str,
    produced: &Produced,
) -> Consumed {
    let mut out = Consumed::default();
    let expected: HashMap<&str, &Bytes> = produced
        .sent
        .iter()
        .map(|s| (s.uniq_key.as_str(), &s.body))
        .collect();
    let broker = virtual_broker(&produced.route)
        .map(|q| q.broker_name.clone())
        .unwrap_or_default();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + CONSUME_LIMIT;
    while seen.len() < expected.len() && Instant::now() < deadline {
        let req = sdk::pop(CONSUMER_GROUP, topic, -1, 32, POP_INVISIBLE, POP_POLL);
        out.pops += 1;
        let resp = match consumer.invoke(req, RPC + POP_POLL).await {
            Ok(r) => r,
            Err(e) => {
                out.problems.push(format!("pop of {topic} failed: {e}"));
                break;
            }
        };
        match resp.code() {
            response_code::SUCCESS => {}
            response_code::POLLING_TIMEOUT | response_code::PULL_NOT_FOUND => {
                out.empty_pops += 1;
                continue;
            }
            code => {
                out.problems.push(format!(
                    "pop of {topic} refused: code {code} {}",
                    resp.remark().unwrap_or_default()
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let messages = match sdk::popped(&resp, &broker) {
            Ok(m) => m,
            Err(e) => {
                out.problems.push(e.to_string());
                continue;
            }
        };
        for msg in messages {
            let key = msg.uniq_key.clone().unwrap_or_default();
            match expected.get(key.as_str()) {
                None => out
                    .problems
                    .push(format!("popped a message that was not sent: {key:?}")),
                Some(body) if **body != msg.body => out
                    .problems
                    .push(format!("message {key} came back with another body")),
                Some(_) if !seen.insert(key.clone()) => out
                    .problems
                    .push(format!("message {key} was received twice")),
                Some(_) => out.received += 1,
            }
            *out.per_broker
                .entry(msg.handle.broker_name.to_string())
                .or_default() += 1;
            let second = out.received % 2 == 0;
            let conn = if second { acker } else { consumer };
            match conn
                .invoke(sdk::ack(CONSUMER_GROUP, topic, &msg.handle), RPC)
                .await
            {
                Ok(r) if r.code() == response_code::SUCCESS => out.acked[usize::from(second)] += 1,
                Ok(r) => out.problems.push(format!(
                    "ack of {key} refused: code {} {}",
                    r.code(),
                    r.remark().unwrap_or_default()
                )),
                Err(e) => out.problems.push(format!("ack of {key} failed: {e}")),
            }
        }
    }
    if seen.len() < expected.len() {
        out.problems.push(format!(
            "only {} of {} {topic} messages arrived within {CONSUME_LIMIT:?}",
            seen.len(),
            expected.len()
        ));
    }
    out
}

/// The broker's own per-queue max offsets of `topic` (messages stored per queue).
pub(super) async fn max_offsets(addr: SocketAddr, topic: &str) -> Result<Vec<i64>> {
    let client = RemotingClient::connect_timeout(addr, RPC, None)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut out = Vec::new();
    for queue_id in 0..QUEUES {
        let header = GetMaxOffsetRequestHeader {
            topic: topic.to_owned(),
            queue_id,
            ..GetMaxOffsetRequestHeader::default()
        };
        let req = RemotingCommand::request_with_header(request_code::GET_MAX_OFFSET, &header);
        let resp = client.invoke(req, RPC).await?;
        let offset = resp
            .decode_header::<OffsetResponseHeader>()
            .map(|h| h.offset)
            .with_context(|| format!("GET_MAX_OFFSET answer of {addr}"))?;
        out.push(offset);
    }
    client.close();
    Ok(out)
}
