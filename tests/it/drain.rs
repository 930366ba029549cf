//! SIGTERM during a consume load through a sidecar process: every ack owed for a committed
//! offset reaches the broker before the process exits, and nothing handed out but not committed
//! is acked (the broker will redeliver it).
//!
//! A broker runs in-process; the sidecar is the real binary (static bootstrap), stopped with a
//! real SIGTERM while four pull loops (a legacy consumer's queues) pull and commit through it.
//! Afterwards the broker's pop checkpoint log is read back: the ground truth of what was acked.

use crate::support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocketmesh::broker::store::PopStore;
use rocketmesh::broker::{self, BrokerConfig};
use rocketmesh::remoting::RemotingClient;
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::{
    PullMessageRequestHeader, PullMessageResponseHeader, SendMessageRequestHeaderV2,
    SendMessageResponseHeader, UpdateConsumerOffsetRequestHeader,
};
use rocketmesh_filters::codec::message::{decode_records, property_keys, Properties};
use rocketmesh_filters::codec::RemotingCommand;

const T: Duration = Duration::from_secs(10);
const TOPIC: &str = "DrainConsumeT";
const GROUP: &str = "drain_consume_group";
const QUEUES: i32 = 4;
const MESSAGES: usize = 400;

/// Where each message is stored: body -> (queue, queue offset).
type Stored = BTreeMap<String, (i32, i64)>;

#[derive(Default)]
struct Seen {
    /// Handed to the consumer, commit not asked yet.
    received: BTreeSet<String>,
    /// A commit covering it was answered SUCCESS by the sidecar: its ack is owed.
    committed: BTreeSet<String>,
    /// A commit covering it was sent but not answered (the connection ended): unknown.
    unknown: BTreeSet<String>,
}

async fn produce(broker: SocketAddr) -> Stored {
    let c = RemotingClient::connect_timeout(broker, T, None)
        .await
        .unwrap();
    let mut stored = Stored::new();
    for i in 0..MESSAGES {
        let body = format!("m{i}");
        let mut props = Properties::default();
        props.insert(property_keys::UNIQ_KEY, format!("K{body}"));
        let h = SendMessageRequestHeaderV2 {
            a: "pg".into(),
            b: TOPIC.into(),
            c: "TBW102".into(),
            d: QUEUES,
            e: i as i32 % QUEUES,
            i: Some(props.to_wire_string()),
            ..SendMessageRequestHeaderV2::default()
        };
        let req = RemotingCommand::request_with_header(rc::SEND_MESSAGE_V2, &h)
            .with_body(body.clone().into_bytes());
        let resp = c.invoke(req, T).await.unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let rh: SendMessageResponseHeader = resp.decode_header().unwrap();
        stored.insert(body, (rh.queue_id, rh.queue_offset));
    }
    c.close();
    stored
}

/// One queue of a legacy consumer: pull, remember, commit, until the sidecar goes away.
async fn consume_queue(sidecar: SocketAddr, queue: i32, seen: Arc<Mutex<Seen>>) {
    let Ok(c) = RemotingClient::connect_timeout(sidecar, T, None).await else {
        return;
    };
    let mut offset = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !c.is_closed() {
        let h = PullMessageRequestHeader {
            consumer_group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: queue,
            queue_offset: offset,
            max_msg_nums: 8,
            suspend_timeout_millis: 300,
            subscription: Some("*".into()),
            expression_type: Some("TAG".into()),
            ..PullMessageRequestHeader::default()
        };
        let req = RemotingCommand::request_with_header(rc::PULL_MESSAGE, &h);
        let Ok(resp) = c.invoke(req, T).await else {
            return;
        };
        if resp.code() == response_code::SYSTEM_ERROR {
            // Draining: the sidecar refuses new pulls; a real SDK waits and pulls again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Ok(rh) = resp.decode_header::<PullMessageResponseHeader>() else {
            continue;
        };
        if resp.code() != response_code::SUCCESS {
            offset = rh.next_begin_offset.max(offset);
            continue;
        }
        let bodies: Vec<String> = decode_records(resp.body())
            .unwrap()
            .into_iter()
            .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
            .collect();
        seen.lock().received.extend(bodies.iter().cloned());
        offset = rh.next_begin_offset;
        let commit = UpdateConsumerOffsetRequestHeader {
            consumer_group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: queue,
            commit_offset: offset,
            bname: None,
        };
        let req = RemotingCommand::request_with_header(rc::UPDATE_CONSUMER_OFFSET, &commit);
        let answered = c.invoke(req, T).await;
        let mut s = seen.lock();
        for b in bodies {
            s.received.remove(&b);
            match &answered {
                Ok(r) if r.code() == response_code::SUCCESS => s.committed.insert(b),
                Ok(_) => s.received.insert(b),
                Err(_) => s.unknown.insert(b),
            };
        }
    }
}

/// A TCP relay to `target` that delays every chunk sent towards it by `delay` (latency, not a
/// throughput cap): acks take that long to reach the broker, so some are in flight whenever
/// SIGTERM arrives.
async fn slow_link(target: SocketAddr, delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (mut down_r, mut down_w) = down.into_split();
            let (mut up_r, mut up_w) = up.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = down_r.read(&mut buf).await {
                    if n == 0
                        || tx
                            .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, chunk)) = rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    if up_w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
            });
        }
    });
    addr
}

fn write_bootstrap(dir: &std::path::Path, broker: SocketAddr) -> std::path::PathBuf {
    let y = format!(
        "clusters:\n  - name: main\n    endpoints:\n      - address: {broker}\n        broker_name: broker-a\n        broker_id: 0\n        cluster_name: DefaultCluster\n        perm: 6\n        read_queue_num: {QUEUES}\n        write_queue_num: {QUEUES}\ntopics:\n  - topic: {TOPIC}\n    cluster: main\n"
    );
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, y).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_consume_sends_every_owed_ack() {
    tokio::time::timeout(Duration::from_secs(120), run())
        .await
        .expect("test exceeded its deadline");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broker");
    let mut bcfg = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), data.clone());
    bcfg.name = "broker-a".into();
    let b = broker::start(bcfg).await.unwrap();
    common::create_topic(b.addr, TOPIC, 6, QUEUES).await;
    let stored = produce(b.addr).await;

    let [listen, admin] = common::free_ports::<2>();
    let link = slow_link(b.addr, Duration::from_millis(250)).await;
    let bootstrap = write_bootstrap(dir.path(), link);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .args(["sidecar", "--bootstrap"])
        .arg(&bootstrap)
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--drain-timeout", "10s", "--vip-channel", "false"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the sidecar printed its ready line");
    let sidecar: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let consumers: Vec<_> = (0..QUEUES)
        .map(|q| tokio::spawn(consume_queue(sidecar, q, seen.clone())))
        .collect();
    // SIGTERM in the middle of the load: some commits done, messages still coming.
    let mid = Instant::now() + Duration::from_secs(30);
    while seen.lock().committed.len() < MESSAGES / 4 {
        assert!(Instant::now() < mid, "the consumer never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_term = seen.lock().committed.len();
    assert!(at_term < MESSAGES, "the load ended before SIGTERM");
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let exited = Arc::new(AtomicBool::new(false));
    let status = {
        let exited = exited.clone();
        tokio::task::spawn_blocking(move || {
            let s = child.wait();
            exited.store(true, Ordering::SeqCst);
            s
        })
    };
    let status = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("the sidecar exits within its drain deadline")
        .unwrap()
        .unwrap();
    assert!(status.success(), "sidecar exit: {status:?}");
    for c in consumers {
        c.await.unwrap();
    }
    // The ground truth: the broker's pop checkpoints, read back after a clean stop.
    b.shutdown().await;
    let pops = PopStore::open(data.join("pop").join("checkpoint.log"), 1 << 20, 1 << 20).unwrap();
    let mut unacked: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (ck, offsets) in pops.expired(i64::MAX) {
        if ck.topic == TOPIC && ck.group == GROUP {
            unacked.extend(offsets.into_iter().map(|o| (ck.queue_id, o)));
        }
    }
    let seen = seen.lock();
    assert!(seen.committed.len() > at_term || seen.committed.len() >= MESSAGES / 4);
    let not_acked: Vec<&String> = seen
        .committed
        .iter()
        .filter(|m| unacked.contains(&stored[*m]))
        .collect();
    assert!(
        not_acked.is_empty(),
        "{} of {} committed messages were never acked: {:?}",
        not_acked.len(),
        seen.committed.len(),
        &not_acked[..not_acked.len().min(10)]
    );
    // Handed out, never committed: still owed to the consumer group (redelivered), not acked.
    let lost: Vec<&String> = seen
        .received
        .iter()
        .filter(|m| !unacked.contains(&stored[*m]))
        .collect();
    assert!(lost.is_empty(), "acked without a commit: {lost:?}");
    println!(
        "committed {} (at SIGTERM {at_term}), uncommitted {}, unknown {}, unacked at broker {}",
        seen.committed.len(),
        seen.received.len(),
        seen.unknown.len(),
        unacked.len()
    );
}
