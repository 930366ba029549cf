//! `rocketmesh bench`: a Remoting load generator.
//!
//! * `send`: N connections x M requests in flight, each a synchronous SEND_MESSAGE_V2 of S bytes
//!   spread over the topic's write queues (from its route; with no route, the SDK's auto-create
//!   fallback: `defaultTopic=TBW102`, 4 queues).
//! * `pop`: POP_MESSAGE (32 per call) then one ACK_MESSAGE per message, the way a 5.x Pop consumer
//!   works; counts acked messages.
//! * `pull`: PULL_MESSAGE over every read queue from offset 0 (queues split across workers),
//!   counts pulled messages.
//!
//! It prints throughput and p50/p99/p99.9 latency of the measured request, and with `--json` one
//! JSON line for scripts. The target can be a broker, a sidecar or a proxy in front of either.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rocketmesh_filters::codec::body::TopicRouteData;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::headers::{PullMessageRequestHeader, PullMessageResponseHeader};
use rocketmesh_filters::codec::message::RecordIter;
use rocketmesh_filters::codec::RemotingCommand;

use crate::cli::{BenchArgs, BenchMode};
use crate::remoting::RemotingClient;
use crate::sdk;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const GROUP: &str = "rocketmesh_bench";

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

struct Shared {
    requests: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
}

/// Runs the benchmark described by `args`.
pub async fn run(args: &BenchArgs) -> Result<BenchReport> {
    if args.connections == 0 || args.inflight == 0 {
        bail!("--connections and --inflight must be at least 1");
    }
    let route = fetch_route(args.target, &args.topic).await?;
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(
            RemotingClient::connect_timeout(args.target, Duration::from_secs(5), None)
                .await
                .with_context(|| format!("connecting to {}", args.target))?,
        );
    }
    let shared = Arc::new(Shared {
        requests: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
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
        let broker = route
            .as_ref()
            .and_then(|r| r.queue_datas.first())
            .map(|q| q.broker_name.clone())
            .unwrap_or_default();
        let auto_create = route.is_none();
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
                    pop_worker(&client, &topic, &broker, deadline, &shared, &mut hist).await
                }
                BenchMode::Pull => {
                    pull_worker(&client, &topic, &my_queues, deadline, &shared, &mut hist).await
                }
            }
            hist
        }));
    }
    let mut latency = new_histogram();
    for t in tasks {
        let h = t.await.context("bench worker panicked")?;
        latency.add(&h).context("merging histograms")?;
    }
    let elapsed = started.elapsed();
    for c in &clients {
        c.close();
    }
    Ok(BenchReport {
        mode: match args.mode {
            BenchMode::Send => "send",
            BenchMode::Pop => "pop",
            BenchMode::Pull => "pull",
        },
        target: args.target,
        requests: shared.requests.load(Ordering::Relaxed),
        messages: shared.messages.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed,
        latency,
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 us .. 60 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds")
}

async fn fetch_route(target: SocketAddr, topic: &str) -> Result<Option<TopicRouteData>> {
    let client = RemotingClient::connect_timeout(target, Duration::from_secs(5), None)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let route = sdk::route(&client, topic, RPC_TIMEOUT).await;
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
    let producer_group = format!("{GROUP}_producer");
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        n += 1;
        let req = sdk::send_v2(
            &producer_group,
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
                shared.messages.fetch_add(1, Ordering::Relaxed);
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

async fn pop_worker(
    client: &RemotingClient,
    topic: &str,
    broker: &str,
    deadline: Instant,
    shared: &Shared,
    hist: &mut Histogram<u64>,
) {
    while Instant::now() < deadline {
        let req = sdk::pop(
            GROUP,
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
        for msg in messages {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            match client
                .invoke(sdk::ack(GROUP, topic, &msg.handle), RPC_TIMEOUT)
                .await
            {
                Ok(r) if r.code() == response_code::SUCCESS => {
                    shared.messages.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        record(hist, started);
    }
}

async fn pull_worker(
    client: &RemotingClient,
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
    while Instant::now() < deadline {
        let (broker, qid) = &queues[i];
        let header = PullMessageRequestHeader {
            consumer_group: GROUP.into(),
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
                    shared.messages.fetch_add(n as u64, Ordering::Relaxed);
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
