//! `rocketmesh bench`: a Remoting load generator.
//!
//! * `send`: N connections x M requests in flight, each a synchronous SEND_MESSAGE_V2 of S bytes
//!   spread over the topic's write queues (from its route; with no route, the SDK's auto-create
//!   fallback: `defaultTopic=TBW102`, 4 queues).
//! * `pop`: POP_MESSAGE (32 per call) then, with `--ack batch` (the default), one
//!   BATCH_ACK_MESSAGE for the pop's messages, the way a 5.x Pop consumer acks; with
//!   `--ack single`, one ACK_MESSAGE per message, one at a time. Counts acked messages.
//! * `pull`: PULL_MESSAGE over every read queue from offset 0 (queues split across workers),
//!   counts pulled messages.
//! * `consume`: a 4.x push consumer's pull loop (`DefaultMQPushConsumer`, clustering): the route,
//!   QUERY_CONSUMER_OFFSET per read queue, then one PULL_MESSAGE at a time per queue (32 messages,
//!   long polling, the commit-offset flag carrying the consumed offset, subscription `*`),
//!   following nextBeginOffset, and UPDATE_CONSUMER_OFFSET (oneway) of every queue each second;
//!   queues split across the connections. Messages count as consumed when pulled. At the end every
//!   queue's offset is persisted once more (answered). Through a sidecar each pull becomes a POP
//!   and each commit ACKs.
//!
//! `--messages N` stops pop/pull/consume once N messages were received (the clock stops then);
//! `--group` names the consumer group.
//! It prints throughput and p50/p99/p99.9 latency of the measured request, and with `--json` one
//! JSON line for scripts. The target can be a broker, a sidecar or a proxy in front of either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rocketmesh_filters::codec::body::TopicRouteData;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{
    PullMessageRequestHeader, PullMessageResponseHeader, PullSysFlag,
    QueryConsumerOffsetRequestHeader, QueryConsumerOffsetResponseHeader,
    UpdateConsumerOffsetRequestHeader,
};
use rocketmesh_filters::codec::message::RecordIter;
use rocketmesh_filters::codec::RemotingCommand;

use crate::cli::{BenchArgs, BenchMode, PopAck};
use crate::remoting::tls::{ClientTls, ClientTlsOptions, DEFAULT_RELOAD_INTERVAL};
use crate::remoting::RemotingClient;
use crate::sdk;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Long-poll time of a consume-mode pull (a push consumer asks 15 s; shorter here so a run ends
/// soon after its last message).
const CONSUME_SUSPEND: Duration = Duration::from_secs(1);
/// How often consume mode persists offsets (the SDK's persistConsumerOffsetInterval is 5 s).
const CONSUME_PERSIST: Duration = Duration::from_secs(1);

/// Results of one run.
#[derive(Debug)]
pub struct BenchReport {
    pub mode: &'static str,
    pub target: SocketAddr,
    pub requests: u64,
    pub messages: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl BenchReport {
    /// Messages per second.
    pub fn throughput(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The human-readable summary.
    pub fn human(&self) -> String {
        format!(
            "{} -> {}: {} messages in {:.2}s = {:.0} msg/s ({} requests, {} errors); latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
            self.mode,
            self.target,
            self.messages,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.requests,
            self.errors,
            self.quantile_us(0.50),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
        )
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"target\":\"{}\",\"messages\":{},\"requests\":{},\"errors\":{},\"seconds\":{:.3},\"msg_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
            self.mode,
            self.target,
            self.messages,
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.quantile_us(0.50),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
        )
    }
}

pub(crate) struct Shared {
    pub(crate) requests: AtomicU64,
    messages: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Stop after this many messages (0: no limit).
    limit: u64,
    started: Instant,
    /// When `limit` was reached, in ns since `started` (0: not yet).
    reached_ns: AtomicU64,
}

impl Shared {
    /// Counts `n` received messages; stops the clock when they reach the limit.
    pub(crate) fn add_messages(&self, n: u64) {
        let total = self.messages.fetch_add(n, Ordering::Relaxed) + n;
        if self.limit > 0 && total >= self.limit && total - n < self.limit {
            let ns = self.started.elapsed().as_nanos().max(1) as u64;
            let _ = self
                .reached_ns
                .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub(crate) fn done(&self, deadline: Instant) -> bool {
        (self.limit > 0 && self.messages.load(Ordering::Relaxed) >= self.limit)
            || Instant::now() >= deadline
    }

    fn elapsed(&self) -> Duration {
        match self.reached_ns.load(Ordering::Relaxed) {
            0 => self.started.elapsed(),
            ns => Duration::from_nanos(ns),
        }
    }
}

/// Runs the benchmark described by `args`.
pub async fn run(args: &BenchArgs) -> Result<BenchReport> {
    if args.connections == 0 || args.inflight == 0 {
        bail!("--connections and --inflight must be at least 1");
    }
    let tls = match &args.tls_ca {
        Some(ca) => {
            let opts = ClientTlsOptions {
                ca: ca.clone(),
                sni: args.tls_sni.clone(),
                ..ClientTlsOptions::default()
            };
            let tls = ClientTls::new(opts, DEFAULT_RELOAD_INTERVAL).context("--tls-ca")?;
            Some(if args.tls_no_resumption {
                tls.without_resumption()
            } else {
                tls
            })
        }
        None => None,
    };
    let shared = |started| {
        Arc::new(Shared {
            requests: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            limit: args.messages,
            started,
            reached_ns: AtomicU64::new(0),
        })
    };
    if args.mode == BenchMode::Connect {
        let started = Instant::now();
        let shared = shared(started);
        let deadline = started + Duration::from_secs(args.duration);
        let latency = crate::bench_connect::run(args, tls, deadline, &shared).await?;
        return Ok(report(args, &shared, latency));
    }
    let connect = || {
        let host = args
            .tls_sni
            .clone()
            .unwrap_or_else(|| args.target.ip().to_string());
        let tls = tls.clone();
        async move {
            RemotingClient::connect_timeout_tls(
                args.target,
                &host,
                tls.as_deref(),
                Duration::from_secs(5),
                None,
            )
            .await
            .with_context(|| format!("connecting to {}", args.target))
        }
    };
    let route = fetch_route(&connect().await?, &args.topic).await?;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(connect().await?);
    }
    let started = Instant::now();
    let shared = shared(started);
    let deadline = started + Duration::from_secs(args.duration);
    if args.mode == BenchMode::Consume {
        let Some(route) = route else {
            bail!(
                "topic {} does not exist (consume needs its route)",
                args.topic
            );
        };
        let latency = consume(args, &route, &clients, deadline, &shared).await?;
        for c in &clients {
            c.close();
        }
        return Ok(report(args, &shared, latency));
    }
    let workers = args.connections * args.inflight;
    let read_queues: Vec<(String, i32)> = route
        .as_ref()
        .map(|r| {
            r.queue_datas
                .iter()
                .flat_map(|q| (0..q.read_queue_nums).map(move |i| (q.broker_name.clone(), i)))
                .collect()
        })
        .unwrap_or_else(|| (0..4).map(|i| (String::new(), i)).collect());
    let write_queues: i32 = route
        .as_ref()
        .and_then(|r| r.queue_datas.first())
        .map(|q| q.write_queue_nums.max(1))
        .unwrap_or(4);
    let body = vec![b'x'; args.size];
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let client = clients[w % clients.len()].clone();
        let shared = shared.clone();
        let topic = args.topic.clone();
        let body = body.clone();
        let my_queues: Vec<(String, i32)> = read_queues
            .iter()
            .enumerate()
            .filter(|(i, _)| i % workers == w)
            .map(|(_, q)| q.clone())
            .collect();
        let mode = args.mode;
        let group = args.group.clone();
        let broker = route
            .as_ref()
            .and_then(|r| r.queue_datas.first())
            .map(|q| q.broker_name.clone())
            .unwrap_or_default();
        let auto_create = route.is_none();
        let ack = args.ack;
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            match mode {
                BenchMode::Send => {
                    send_worker(
                        &client,
                        &topic,
                        &body,
                        w as i32 % write_queues,
                        write_queues,
                        auto_create,
                        deadline,
                        &shared,
                        &mut hist,
                    )
                    .await
                }
                BenchMode::Pop => {
                    pop_worker(
                        &client, &group, &topic, &broker, ack, deadline, &shared, &mut hist,
                    )
                    .await
                }
                BenchMode::Pull => {
                    pull_worker(
                        &client, &group, &topic, &my_queues, deadline, &shared, &mut hist,
                    )
                    .await
                }
                BenchMode::Consume | BenchMode::Connect => unreachable!("handled above"),
            }
            hist
        }));
    }
    let mut latency = new_histogram();
    for t in tasks {
        let h = t.await.context("bench worker panicked")?;
        latency.add(&h).context("merging histograms")?;
    }
    for c in &clients {
        c.close();
    }
    Ok(report(args, &shared, latency))
}

fn report(args: &BenchArgs, shared: &Shared, latency: Histogram<u64>) -> BenchReport {
    BenchReport {
        mode: match args.mode {
            BenchMode::Send => "send",
            BenchMode::Pop => "pop",
            BenchMode::Pull => "pull",
            BenchMode::Consume => "consume",
            BenchMode::Connect => "connect",
        },
        target: args.target,
        requests: shared.requests.load(Ordering::Relaxed),
        messages: shared.messages.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed: shared.elapsed(),
        latency,
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 us .. 60 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds")
}

async fn fetch_route(client: &RemotingClient, topic: &str) -> Result<Option<TopicRouteData>> {
    let route = sdk::route(client, topic, RPC_TIMEOUT).await;
    client.close();
    route.with_context(|| format!("route query for {topic}"))
}

fn record(hist: &mut Histogram<u64>, started: Instant) {
    let ns = started.elapsed().as_nanos().clamp(1_000, 60_000_000_000) as u64;
    let _ = hist.record(ns);
}

#[allow(clippy::too_many_arguments)]
async fn send_worker(
    client: &RemotingClient,
    topic: &str,
    body: &[u8],
    mut queue: i32,
    queues: i32,
    auto_create: bool,
    deadline: Instant,
    shared: &Shared,
    hist: &mut Histogram<u64>,
) {
    let body = bytes::Bytes::copy_from_slice(body);
    let producer_group = "rocketmesh_bench_producer";
    let mut n: u64 = 0;
    while !shared.done(deadline) {
        n += 1;
        let req = sdk::send_v2(
            producer_group,
            topic,
            queue,
            if auto_create { 4 } else { queues },
            &format!("{:016X}{:016X}", std::process::id(), n),
            body.clone(),
        );
        queue = (queue + 1) % queues;
        let started = Instant::now();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        match client.invoke(req, RPC_TIMEOUT).await {
            Ok(resp) if resp.code() == response_code::SUCCESS => {
                record(hist, started);
                shared.add_messages(1);
            }
            Ok(resp) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("send failed: {} {:?}", resp.code(), resp.remark());
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("send failed: {e}");
                if client.is_closed() {
                    return;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pop_worker(
    client: &RemotingClient,
    group: &str,
    topic: &str,
    broker: &str,
    ack: PopAck,
    deadline: Instant,
    shared: &Shared,
    hist: &mut Histogram<u64>,
) {
    while !shared.done(deadline) {
        let req = sdk::pop(
            group,
            topic,
            -1,
            32,
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match client.invoke(req, RPC_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("pop failed: {e}");
                if client.is_closed() {
                    return;
                }
                continue;
            }
        };
        if resp.code() != response_code::SUCCESS {
            if resp.code() != response_code::POLLING_TIMEOUT
                && resp.code() != response_code::PULL_NOT_FOUND
            {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let messages = match sdk::popped(&resp, broker) {
            Ok(m) => m,
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{e}");
                continue;
            }
        };
        match ack {
            PopAck::Batch => {
                let Some(req) = sdk::batch_ack(group, topic, messages.iter().map(|m| &m.handle))
                else {
                    continue;
                };
                shared.requests.fetch_add(1, Ordering::Relaxed);
                match client.invoke(req, RPC_TIMEOUT).await {
                    Ok(r) if r.code() == response_code::SUCCESS => {
                        shared.add_messages(messages.len() as u64);
                    }
                    _ => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            PopAck::Single => {
                for msg in messages {
                    shared.requests.fetch_add(1, Ordering::Relaxed);
                    match client
                        .invoke(sdk::ack(group, topic, &msg.handle), RPC_TIMEOUT)
                        .await
                    {
                        Ok(r) if r.code() == response_code::SUCCESS => {
                            shared.add_messages(1);
                        }
                        _ => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        record(hist, started);
    }
}

async fn pull_worker(
    client: &RemotingClient,
    group: &str,
    topic: &str,
    queues: &[(String, i32)],
    deadline: Instant,
    shared: &Shared,
    hist: &mut Histogram<u64>,
) {
    if queues.is_empty() {
        return;
    }
    let mut offsets = vec![0i64; queues.len()];
    let mut i = 0;
    while !shared.done(deadline) {
        let (broker, qid) = &queues[i];
        let header = PullMessageRequestHeader {
            consumer_group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id: *qid,
            queue_offset: offsets[i],
            max_msg_nums: 32,
            sys_flag: 0,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            sub_version: 0,
            subscription: Some("*".into()),
            expression_type: Some("TAG".into()),
            bname: (!broker.is_empty()).then(|| broker.clone()),
            ..PullMessageRequestHeader::default()
        };
        let started = Instant::now();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        match client
            .invoke(
                RemotingCommand::request_with_header(request_code::PULL_MESSAGE, &header),
                RPC_TIMEOUT,
            )
            .await
        {
            Ok(resp) => {
                record(hist, started);
                if let Ok(h) = resp.decode_header::<PullMessageResponseHeader>() {
                    offsets[i] = h.next_begin_offset;
                }
                if resp.code() == response_code::SUCCESS {
                    let n = RecordIter::new(resp.body())
                        .take_while(Result::is_ok)
                        .count();
                    shared.add_messages(n as u64);
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("pull failed: {e}");
                if client.is_closed() {
                    return;
                }
            }
        }
        i = (i + 1) % queues.len();
    }
}

/// One read queue of consume mode: its id and the consumed offset (the next to consume).
struct ConsumeQueue {
    queue_id: i32,
    consumed: AtomicI64,
}

/// Consume mode: one pull loop per read queue (each on its connection), one offset persister per
/// connection. Returns the latency of pulls that found messages.
async fn consume(
    args: &BenchArgs,
    route: &TopicRouteData,
    clients: &[RemotingClient],
    deadline: Instant,
    shared: &Arc<Shared>,
) -> Result<Histogram<u64>> {
    let queue_ids: Vec<i32> = route
        .queue_datas
        .iter()
        .flat_map(|q| 0..q.read_queue_nums)
        .collect();
    if queue_ids.is_empty() {
        bail!("topic {} has no read queues", args.topic);
    }
    // Queues split across connections, as a consumer group's rebalance splits them across members.
    let mut per_conn: Vec<Vec<Arc<ConsumeQueue>>> = vec![Vec::new(); clients.len()];
    for (i, &queue_id) in queue_ids.iter().enumerate() {
        let client = &clients[i % clients.len()];
        let start = query_offset(client, &args.group, &args.topic, queue_id).await?;
        per_conn[i % clients.len()].push(Arc::new(ConsumeQueue {
            queue_id,
            consumed: AtomicI64::new(start),
        }));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut persisters = Vec::new();
    let mut pullers = Vec::new();
    for (client, queues) in clients.iter().zip(&per_conn) {
        persisters.push(tokio::spawn(persist_loop(
            client.clone(),
            args.group.clone(),
            args.topic.clone(),
            queues.clone(),
            stop.clone(),
        )));
        for q in queues {
            let (client, shared, q) = (client.clone(), shared.clone(), q.clone());
            let (group, topic) = (args.group.clone(), args.topic.clone());
            pullers.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                consume_queue(&client, &group, &topic, &q, deadline, &shared, &mut hist).await;
                hist
            }));
        }
    }
    let mut latency = new_histogram();
    for t in pullers {
        let h = t.await.context("bench worker panicked")?;
        latency.add(&h).context("merging histograms")?;
    }
    stop.cancel();
    for t in persisters {
        t.await.context("offset persister panicked")?;
    }
    // As a consumer's shutdown does: persist every queue's offset, answered this time.
    for (client, queues) in clients.iter().zip(&per_conn) {
        for q in queues {
            let req = update_offset(&args.group, &args.topic, q);
            match client.invoke(req, RPC_TIMEOUT).await {
                Ok(r) if r.code() == response_code::SUCCESS => {}
                Ok(r) => bail!(
                    "final UPDATE_CONSUMER_OFFSET of queue {} refused: {} {:?}",
                    q.queue_id,
                    r.code(),
                    r.remark()
                ),
                Err(e) => bail!("final UPDATE_CONSUMER_OFFSET of queue {}: {e}", q.queue_id),
            }
        }
    }
    Ok(latency)
}

/// QUERY_CONSUMER_OFFSET: the stored offset, 0 when there is none (QUERY_NOT_FOUND).
async fn query_offset(
    client: &RemotingClient,
    group: &str,
    topic: &str,
    queue_id: i32,
) -> Result<i64> {
    let h = QueryConsumerOffsetRequestHeader {
        consumer_group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id,
        set_zero_if_not_found: None,
        bname: None,
    };
    let req = RemotingCommand::request_with_header(request_code::QUERY_CONSUMER_OFFSET, &h);
    let resp = client
        .invoke(req, RPC_TIMEOUT)
        .await
        .with_context(|| format!("QUERY_CONSUMER_OFFSET of queue {queue_id}"))?;
    if resp.code() != response_code::SUCCESS {
        return Ok(0);
    }
    let rh: QueryConsumerOffsetResponseHeader = resp
        .decode_header()
        .context("QUERY_CONSUMER_OFFSET response header")?;
    Ok(rh.offset.max(0))
}

fn update_offset(group: &str, topic: &str, q: &ConsumeQueue) -> RemotingCommand {
    let h = UpdateConsumerOffsetRequestHeader {
        consumer_group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id: q.queue_id,
        commit_offset: q.consumed.load(Ordering::Relaxed),
        bname: None,
    };
    RemotingCommand::request_with_header(request_code::UPDATE_CONSUMER_OFFSET, &h)
}

/// The SDK's offset persistence: every [`CONSUME_PERSIST`], a oneway UPDATE_CONSUMER_OFFSET for
/// each queue whose consumed offset moved.
async fn persist_loop(
    client: RemotingClient,
    group: String,
    topic: String,
    queues: Vec<Arc<ConsumeQueue>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut persisted: Vec<i64> = queues
        .iter()
        .map(|q| q.consumed.load(Ordering::Relaxed))
        .collect();
    let mut tick = tokio::time::interval(CONSUME_PERSIST);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for (q, last) in queues.iter().zip(persisted.iter_mut()) {
            let now = q.consumed.load(Ordering::Relaxed);
            if now == *last {
                continue;
            }
            if client
                .invoke_oneway(update_offset(&group, &topic, q))
                .await
                .is_ok()
            {
                *last = now;
            }
        }
    }
}

/// One queue's pull loop, as `DefaultMQPushConsumerImpl.pullMessage` with instant consumption:
/// the commit offset is what was consumed (everything before this pull's offset).
async fn consume_queue(
    client: &RemotingClient,
    group: &str,
    topic: &str,
    q: &ConsumeQueue,
    deadline: Instant,
    shared: &Shared,
    hist: &mut Histogram<u64>,
) {
    let mut offset = q.consumed.load(Ordering::Relaxed);
    while !shared.done(deadline) {
        let commit = q.consumed.load(Ordering::Relaxed);
        let flags = PullSysFlag::new(commit > 0, true, true, false);
        let header = PullMessageRequestHeader {
            consumer_group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id: q.queue_id,
            queue_offset: offset,
            max_msg_nums: 32,
            sys_flag: flags.bits(),
            commit_offset: commit,
            suspend_timeout_millis: CONSUME_SUSPEND.as_millis() as i64,
            sub_version: 0,
            subscription: Some("*".into()),
            expression_type: Some("TAG".into()),
            ..PullMessageRequestHeader::default()
        };
        let req = RemotingCommand::request_with_header(request_code::PULL_MESSAGE, &header);
        let started = Instant::now();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match client.invoke(req, RPC_TIMEOUT + CONSUME_SUSPEND).await {
            Ok(r) => r,
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("pull failed: {e}");
                if client.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let next = resp
            .decode_header::<PullMessageResponseHeader>()
            .ok()
            .map(|h| h.next_begin_offset);
        match resp.code() {
            response_code::SUCCESS => {
                record(hist, started);
                let n = RecordIter::new(resp.body())
                    .take_while(Result::is_ok)
                    .count();
                // Consumed at once: the consumed offset moves past this batch.
                let Some(next) = next else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                offset = next;
                q.consumed.store(next, Ordering::Relaxed);
                shared.add_messages(n as u64);
            }
            response_code::PULL_NOT_FOUND
            | response_code::PULL_RETRY_IMMEDIATELY
            | response_code::PULL_OFFSET_MOVED => {
                if let Some(next) = next {
                    offset = next;
                    if resp.code() == response_code::PULL_OFFSET_MOVED {
                        q.consumed.store(next, Ordering::Relaxed);
                    }
                }
            }
            code => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("pull refused: {code} {:?}", resp.remark());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
