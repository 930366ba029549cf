//! Store tests: round trips, rollover, pull statuses, group commit, recovery, offsets, pop
//! checkpoints, crash snapshots and hostile files.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use rocketmesh_filters::codec::body::java_string_hash;
use rocketmesh_filters::codec::message::{
    decode_records, property_keys, MessageExt, Properties, BLANK_MAGIC_CODE,
};

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "rocketmesh-store-{name}-{}-{n}-{}",
            std::process::id(),
            rocketmesh_filters::clock::unix_ms()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small_config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.commit_log_segment_size = 4096;
    c.consume_queue_segment_entries = 8;
    c.flush_mode = FlushMode::Async {
        interval: Duration::from_millis(50),
    };
    c
}

fn msg(topic: &str, qid: i32, body: &[u8], tags: Option<&str>) -> MessageExt {
    let mut properties = Properties::new();
    if let Some(t) = tags {
        properties.insert(property_keys::TAGS, t);
    }
    properties.insert(property_keys::KEYS, "k1 k2");
    properties.insert(property_keys::UNIQ_KEY, format!("ID-{}", body.len()));
    MessageExt {
        topic: topic.to_owned(),
        queue_id: qid,
        body: Bytes::copy_from_slice(body),
        properties,
        born_timestamp: 1_700_000_000_000,
        born_host: "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        store_host: "10.0.0.1:10911".parse::<SocketAddr>().unwrap(),
        ..MessageExt::default()
    }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    let mut b = format!("message-{i}-").into_bytes();
    b.resize(len, b'a' + (i % 26) as u8);
    b
}

fn all(_: i64) -> bool {
    true
}

/// Pulls everything of a queue, following next_begin_offset.
fn pull_all(store: &MessageStore, topic: &str, qid: i32) -> Vec<MessageExt> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = store
            .get_messages(topic, qid, offset, 32, MAX_PULL_BYTES, all)
            .unwrap();
        if r.status != GetStatus::Found {
            break;
        }
        out.extend(decode_records(&r.body()).unwrap());
        offset = r.next_begin_offset;
    }
    out
}

/// Tiny deterministic PRNG for hostile bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(util::segment_file_name(base))
}

#[test]
fn put_get_round_trip() {
    let d = TestDir::new("roundtrip");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let mut results = Vec::new();
    for i in 0..10 {
        let r = store
            .put(msg("TopicA", (i % 2) as i32, &body(i, 50), Some("tagA")))
            .unwrap();
        results.push(r);
    }
    // Queue offsets are consecutive per queue.
    let q0: Vec<i64> = results.iter().step_by(2).map(|r| r.queue_offset).collect();
    let q1: Vec<i64> = results
        .iter()
        .skip(1)
        .step_by(2)
        .map(|r| r.queue_offset)
        .collect();
    assert_eq!(q0, vec![0, 1, 2, 3, 4]);
    assert_eq!(q1, vec![0, 1, 2, 3, 4]);
    assert_eq!(store.max_offset("TopicA", 0), 5);
    assert_eq!(store.min_offset("TopicA", 0), 0);
    assert_eq!(store.queue_ids("TopicA"), vec![0, 1]);
    assert_eq!(store.topics(), vec!["TopicA".to_owned()]);

    let r = store
        .get_messages("TopicA", 0, 0, 32, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.records.len(), 5);
    assert_eq!(r.next_begin_offset, 5);
    assert_eq!((r.min_offset, r.max_offset), (0, 5));
    let decoded = decode_records(&r.body()).unwrap();
    for (k, m) in decoded.iter().enumerate() {
        let i = k * 2;
        let put = &results[i];
        assert_eq!(m.body.as_ref(), body(i, 50).as_slice());
        assert_eq!(m.topic, "TopicA");
        assert_eq!(m.queue_offset, k as i64);
        assert_eq!(m.commit_log_offset as u64, put.commit_log_offset);
        assert_eq!(m.store_timestamp, put.store_timestamp);
        assert_eq!(m.properties.tags(), Some("tagA"));
        assert_eq!(m.properties.get(property_keys::KEYS), Some("k1 k2"));
        assert_eq!(m.born_host, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(m.offset_msg_id(), put.msg_id);
        m.check_crc().unwrap();
        let looked = store.lookup_by_phys_offset(m.commit_log_offset).unwrap();
        assert_eq!(&looked, m);
    }
    assert!(store.lookup_by_phys_offset(1).is_err());
    assert!(store.lookup_by_phys_offset(-1).is_err());
    assert!(store.lookup_by_phys_offset(1 << 40).is_err());
}

#[test]
fn batch_put_and_arrivals() {
    let d = TestDir::new("batch");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    // Parked requests of queue T/0 are woken by the put; those of T/1 are not.
    let (on_q0, on_q1) = (
        store.arrivals().waiter("T", 0),
        store.arrivals().waiter("T", 1),
    );
    let mut woken = std::pin::pin!(on_q0.notified());
    let mut untouched = std::pin::pin!(on_q1.notified());
    woken.as_mut().enable();
    untouched.as_mut().enable();
    store.put(msg("T", 0, b"first", None)).unwrap();
    let batch: Vec<MessageExt> = (0..30).map(|i| msg("T", 0, &body(i, 200), None)).collect();
    let rs = store.put_batch(batch).unwrap();
    let offsets: Vec<i64> = rs.iter().map(|r| r.queue_offset).collect();
    assert_eq!(offsets, (1..31).collect::<Vec<i64>>());
    // 30 * ~300 bytes crosses 4 KiB segments.
    assert!(rs.last().unwrap().commit_log_offset > 4096);
    assert!(woken.as_mut().now_or_never().is_some(), "put woke T/0");
    assert!(untouched.as_mut().now_or_never().is_none(), "T/1 not woken");
    let got = pull_all(&store, "T", 0);
    assert_eq!(got.len(), 31);
    assert_eq!(got[5].body.as_ref(), body(4, 200).as_slice());
    assert!(store.put_batch(Vec::new()).unwrap().is_empty());
}

#[test]
fn segment_rollover_with_blank_filler() {
    let d = TestDir::new("rollover");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let mut results = Vec::new();
    for i in 0..40 {
        results.push(store.put(msg("Roll", 0, &body(i, 300), None)).unwrap());
    }
    // Several commit log segments; the first is full-size and ends with a BLANK record.
    let seg0 = segment_path(d.path(), 0);
    assert_eq!(fs::metadata(&seg0).unwrap().len(), 4096);
    assert!(segment_path(d.path(), 4096).exists());
    assert!(segment_path(d.path(), 8192).exists());
    let first_in_seg1 = results
        .iter()
        .find(|r| r.commit_log_offset >= 4096)
        .unwrap();
    assert_eq!(first_in_seg1.commit_log_offset, 4096);
    let prev = results
        .iter()
        .rfind(|r| r.commit_log_offset < 4096)
        .unwrap();
    let blank_at = prev.end_offset();
    let f = fs::File::open(&seg0).unwrap();
    let mut hdr = [0u8; 8];
    f.read_exact_at(&mut hdr, blank_at).unwrap();
    assert_eq!(
        i32::from_be_bytes(hdr[0..4].try_into().unwrap()) as u64,
        4096 - blank_at
    );
    assert_eq!(
        u32::from_be_bytes(hdr[4..8].try_into().unwrap()),
        BLANK_MAGIC_CODE
    );
    // No record spans a segment boundary.
    for r in &results {
        assert_eq!(r.commit_log_offset / 4096, (r.end_offset() - 1) / 4096);
    }
    // Reads across segments; consume queue rolled over (8 entries per file).
    let got = pull_all(&store, "Roll", 0);
    assert_eq!(got.len(), 40);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body.as_ref(), body(i, 300).as_slice());
    }
    let cq_dir = d.path().join("consumequeue/Roll/0");
    let mut files: Vec<String> = fs::read_dir(&cq_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5);
    assert_eq!(files[1], util::segment_file_name(8));
    // A pull starting in the middle of a CQ file and spanning files.
    let r = store
        .get_messages("Roll", 0, 6, 5, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.records.len(), 5);
    assert_eq!(r.next_begin_offset, 11);
    // Survives a reopen.
    drop(store);
    let store = MessageStore::open(small_config(d.path())).unwrap();
    assert_eq!(pull_all(&store, "Roll", 0).len(), 40);
    let r = store.put(msg("Roll", 0, b"after", None)).unwrap();
    assert_eq!(r.queue_offset, 40);
    assert_eq!(r.commit_log_offset, results.last().unwrap().end_offset());
}

#[test]
fn pull_status_semantics() {
    let d = TestDir::new("status");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let r = store
        .get_messages("Nope", 0, 0, 32, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.status, GetStatus::NoMatchedLogicQueue);
    assert_eq!(r.next_begin_offset, 0);

    for i in 0..5 {
        store.put(msg("S", 0, &body(i, 10), Some("B"))).unwrap();
    }
    for i in 5..10 {
        let tag = if i % 2 == 0 { "A" } else { "B" };
        store.put(msg("S", 0, &body(i, 10), Some(tag))).unwrap();
    }
    let r = store
        .get_messages("S", 0, 10, 32, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.status, GetStatus::OffsetOverflowOne);
    assert_eq!(r.next_begin_offset, 10);
    assert!(r.records.is_empty());
    let r = store
        .get_messages("S", 0, 15, 32, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.status, GetStatus::OffsetOverflowBadly);
    assert_eq!(
        r.next_begin_offset, 0,
        "min offset is 0, so the correction is to 0"
    );
    let r = store
        .get_messages("S", 0, -1, 32, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert_eq!(r.next_begin_offset, 0);

    // Tag filter: only A (offsets 6 and 8).
    let a = i64::from(java_string_hash("A"));
    let only_a = move |code: i64| code == a;
    let r = store
        .get_messages("S", 0, 0, 32, MAX_PULL_BYTES, only_a)
        .unwrap();
    assert_eq!(r.status, GetStatus::Found);
    let got = decode_records(&r.body()).unwrap();
    assert_eq!(
        got.iter().map(|m| m.queue_offset).collect::<Vec<_>>(),
        vec![6, 8]
    );
    assert_eq!(r.next_begin_offset, 10);
    // Nothing matches in the first five: NoMatchedMessage, next offset past the scanned ones.
    let r = store
        .get_messages("S", 0, 0, 32, MAX_PULL_BYTES, |_| false)
        .unwrap();
    assert_eq!(r.status, GetStatus::NoMatchedMessage);
    assert_eq!(r.next_begin_offset, 10);
    assert!(r.records.is_empty());
    // Messages without tags have tags code 0.
    store.put(msg("S", 0, b"untagged", None)).unwrap();
    let r = store
        .get_messages("S", 0, 10, 32, MAX_PULL_BYTES, |c| c == 0)
        .unwrap();
    assert_eq!(r.status, GetStatus::Found);
    // max_count below the cap.
    let r = store
        .get_messages("S", 0, 0, 3, MAX_PULL_BYTES, all)
        .unwrap();
    assert_eq!(r.records.len(), 3);
    assert_eq!(r.next_begin_offset, 3);
}

#[test]
fn pull_caps() {
    let d = TestDir::new("caps");
    let mut c = small_config(d.path());
    c.commit_log_segment_size = 1 << 20;
    let store = MessageStore::open(c).unwrap();
    for i in 0..40 {
        store.put(msg("C", 0, &body(i, 20), None)).unwrap();
    }
    let r = store
        .get_messages("C", 0, 0, 1000, usize::MAX, all)
        .unwrap();
    assert_eq!(r.records.len(), MAX_PULL_MESSAGES);
    assert_eq!(r.next_begin_offset, 32);
    for i in 0..4 {
        store
            .put(msg("Big", 0, &body(i, 100 * 1024), None))
            .unwrap();
    }
    let r = store
        .get_messages("Big", 0, 0, 32, usize::MAX, all)
        .unwrap();
    assert_eq!(r.records.len(), 2, "256 KiB cap");
    assert!(r.total_bytes() <= MAX_PULL_BYTES);
    assert_eq!(r.next_begin_offset, 2);
    // The first record is always returned, even above max_bytes.
    let r = store.get_messages("Big", 0, 0, 32, 10, all).unwrap();
    assert_eq!(r.records.len(), 1);
    assert_eq!(r.next_begin_offset, 1);
}

#[test]
fn size_limits_and_names() {
    let d = TestDir::new("limits");
    let mut c = small_config(d.path());
    c.commit_log_segment_size = 8 << 20;
    let store = MessageStore::open(c).unwrap();
    // A 4 MiB body (the default maximum) plus headers is accepted.
    let big = vec![7u8; DEFAULT_MAX_MESSAGE_SIZE];
    let r = store.put(msg("L", 0, &big, None)).unwrap();
    assert_eq!(
        store
            .lookup_by_phys_offset(r.commit_log_offset as i64)
            .unwrap()
            .body
            .len(),
        big.len()
    );
    let too_big = vec![7u8; DEFAULT_MAX_MESSAGE_SIZE + 1];
    assert!(matches!(
        store.put(msg("L", 0, &too_big, None)),
        Err(StoreError::MessageTooLarge { .. })
    ));
    drop(store);
    // Bigger than a segment.
    let d2 = TestDir::new("limits2");
    let store = MessageStore::open(small_config(d2.path())).unwrap();
    assert!(matches!(
        store.put(msg("L", 0, &[1u8; 5000], None)),
        Err(StoreError::RecordTooLarge { .. })
    ));
    for bad in ["", "../etc", "a/b", "a.b", "with space", &"x".repeat(128)] {
        assert!(
            matches!(
                store.put(msg(bad, 0, b"x", None)),
                Err(StoreError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(store.put(msg("%RETRY%group_1|x-y", 0, b"x", None)).is_ok());
    assert!(matches!(
        store.put(msg("T", -1, b"x", None)),
        Err(StoreError::InvalidQueueId(-1))
    ));
    // Nothing was written by the failed puts.
    assert_eq!(store.topics(), vec!["%RETRY%group_1|x-y".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_group_commit() {
    let d = TestDir::new("groupcommit");
    let mut c = small_config(d.path());
    c.commit_log_segment_size = 1 << 20;
    c.flush_mode = FlushMode::Sync;
    let store = MessageStore::open(c).unwrap();
    let before = store.stats();
    const PUTS: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..PUTS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let r = store
                .put(msg("G", (i % 4) as i32, &body(i, 100), None))
                .unwrap();
            store.wait_durable(r.end_offset()).await.unwrap();
            // Never acknowledged before its fsync.
            assert!(store.flushed_offset() >= r.end_offset());
            r
        }));
    }
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.unwrap().end_offset());
    }
    let after = store.stats();
    let flushes = after.flushes - before.flushes;
    let fsyncs = after.fsyncs - before.fsyncs;
    assert_eq!(after.puts - before.puts, PUTS as u64);
    assert!(flushes >= 1);
    assert!(
        flushes < (PUTS / 4) as u64,
        "{flushes} flush rounds for {PUTS} puts"
    );
    assert!(fsyncs < PUTS as u64, "{fsyncs} fsyncs for {PUTS} puts");
    assert!(after.flushed_offset >= *ends.iter().max().unwrap());
    // After shutdown, waiting for an offset never written fails instead of hanging.
    store.shutdown().unwrap();
    assert!(store.wait_durable(u64::MAX).await.is_err());
    assert!(store.put(msg("G", 0, b"late", None)).is_err());
}

#[tokio::test]
async fn async_mode_wait_durable() {
    let d = TestDir::new("asyncflush");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let r = store.put(msg("A", 0, b"x", None)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), store.wait_durable(r.end_offset()))
        .await
        .unwrap()
        .unwrap();
    assert!(store.flushed_offset() >= r.end_offset());
}

/// Writes `n` messages to two queues and shuts the store down; returns the commit log end.
fn fill(dir: &Path, n: usize) -> u64 {
    let store = MessageStore::open(small_config(dir)).unwrap();
    for i in 0..n {
        store
            .put(msg("R", (i % 2) as i32, &body(i, 120), Some("t")))
            .unwrap();
    }
    store.shutdown().unwrap();
    store.commit_log().end_offset()
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(util::parse_segment_file_name)
                .is_some()
        })
        .collect();
    v.sort();
    v.pop().unwrap()
}

fn append_to(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}

fn check_recovered(dir: &Path, n: usize, end: u64) {
    let store = MessageStore::open(small_config(dir)).unwrap();
    assert_eq!(store.commit_log().end_offset(), end);
    let q0 = pull_all(&store, "R", 0);
    let q1 = pull_all(&store, "R", 1);
    assert_eq!(q0.len() + q1.len(), n);
    assert_eq!(store.max_offset("R", 0) as usize, n.div_ceil(2));
    for m in q0.iter().chain(&q1) {
        m.check_crc().unwrap();
    }
    // Appends continue at the right offsets.
    let r = store.put(msg("R", 0, b"next", None)).unwrap();
    assert_eq!(r.commit_log_offset, end);
    assert_eq!(r.queue_offset as usize, n.div_ceil(2));
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir)).unwrap();
    assert_eq!(pull_all(&store, "R", 0).len(), n.div_ceil(2) + 1);
}

#[test]
fn recovery_truncates_torn_tails() {
    const N: usize = 20;
    // Garbage at the tail.
    let d = TestDir::new("torn-garbage");
    let end = fill(d.path(), N);
    append_to(&last_segment(d.path()), &XorShift(7).bytes(100));
    check_recovered(d.path(), N, end);

    // Half a record at the tail.
    let d = TestDir::new("torn-half");
    let end = fill(d.path(), N);
    let seg = last_segment(d.path());
    let rec = fs::read(&seg).unwrap();
    let last_len = {
        let store = MessageStore::open(small_config(d.path())).unwrap();
        let r = store
            .get_messages("R", 1, 0, 1, MAX_PULL_BYTES, all)
            .unwrap();
        r.records[0].len()
    };
    append_to(&seg, &rec[..last_len / 2]);
    check_recovered(d.path(), N, end);

    // A complete record with a flipped body byte at the tail.
    let d = TestDir::new("torn-crc");
    let end = fill(d.path(), N);
    let seg = last_segment(d.path());
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let mut m = msg("R", 0, b"will be damaged", None);
    m.queue_offset = (N / 2) as i64;
    m.commit_log_offset = end as i64;
    let mut buf = bytes::BytesMut::new();
    rocketmesh_filters::codec::message::encode_record(&m, &mut buf).unwrap();
    store.shutdown().unwrap();
    drop(store);
    let body_pos = buf.len() - m.topic.len() - 1 - 2 - m.properties.wire_len() - 3;
    buf[body_pos] ^= 0x55;
    assert_eq!(fs::metadata(&seg).unwrap().len() % 4096, end % 4096);
    append_to(&seg, &buf);
    check_recovered(d.path(), N, end);
}

#[test]
fn recovery_quarantines_corruption_before_the_tail() {
    let d = TestDir::new("midcorrupt");
    fill(d.path(), 6);
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let r = store
        .get_messages("R", 0, 1, 1, MAX_PULL_BYTES, all)
        .unwrap();
    let victim = decode_records(&r.body()).unwrap().remove(0);
    store.shutdown().unwrap();
    drop(store);
    // Flip a body byte of the record at queue 0 offset 1 (the 3rd record overall).
    let pos = victim.commit_log_offset as u64 + 84 + 4;
    let seg = segment_path(d.path(), 0);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], pos).unwrap();
    drop(f);
    let store = MessageStore::open(small_config(d.path())).unwrap();
    assert_eq!(
        store.commit_log().end_offset(),
        victim.commit_log_offset as u64
    );
    assert_eq!(pull_all(&store, "R", 0).len(), 1);
    assert_eq!(pull_all(&store, "R", 1).len(), 1);
    let corrupt: Vec<_> = fs::read_dir(d.path().join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".corrupt"))
        .collect();
    assert_eq!(corrupt.len(), 1, "{corrupt:?}");
    let r = store.put(msg("R", 0, b"next", None)).unwrap();
    assert_eq!(r.commit_log_offset, victim.commit_log_offset as u64);
    assert_eq!(r.queue_offset, 1);
}

fn snapshot(store: &MessageStore, topic: &str, qids: &[i32]) -> Vec<(i64, i64, Vec<Bytes>)> {
    qids.iter()
        .flat_map(|&q| {
            let mut out = Vec::new();
            let mut off = 0;
            loop {
                let r = store
                    .get_messages(topic, q, off, 32, MAX_PULL_BYTES, all)
                    .unwrap();
                out.push((r.min_offset, r.max_offset, r.records.clone()));
                if r.status != GetStatus::Found {
                    break;
                }
                off = r.next_begin_offset;
            }
            out
        })
        .collect()
}

#[test]
fn consume_queues_rebuilt_from_commit_log() {
    let d = TestDir::new("rebuild");
    fill(d.path(), 50);
    let expected = {
        let store = MessageStore::open(small_config(d.path())).unwrap();
        snapshot(&store, "R", &[0, 1])
    };
    assert_eq!(expected.iter().map(|s| s.2.len()).sum::<usize>(), 50);
    let reopen_same = |what: &str| {
        let store = MessageStore::open(small_config(d.path())).unwrap();
        assert_eq!(snapshot(&store, "R", &[0, 1]), expected, "after {what}");
        assert_eq!(store.queue_ids("R"), vec![0, 1], "after {what}");
    };
    // Without the consume queue directory (checkpoint present).
    fs::remove_dir_all(d.path().join("consumequeue")).unwrap();
    reopen_same("deleting the consume queues");
    // Without one queue only.
    fs::remove_dir_all(d.path().join("consumequeue/R/1")).unwrap();
    reopen_same("deleting one queue");
    // Without the checkpoint.
    fs::remove_file(d.path().join("checkpoint")).unwrap();
    reopen_same("deleting the checkpoint");
    // A consume queue file overwritten with random bytes (same length).
    let f = d
        .path()
        .join("consumequeue/R/0")
        .join(util::segment_file_name(8));
    let len = fs::metadata(&f).unwrap().len() as usize;
    fs::write(&f, XorShift(99).bytes(len)).unwrap();
    reopen_same("overwriting a consume queue file");
    // A consume queue file with a torn entry and one cut short.
    let f = d
        .path()
        .join("consumequeue/R/1")
        .join(util::segment_file_name(16));
    let len = fs::metadata(&f).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    reopen_same("tearing a consume queue entry");
    // A stray queue of an unknown topic with made-up entries is dropped.
    let stray = d.path().join("consumequeue/Ghost/0");
    fs::create_dir_all(&stray).unwrap();
    fs::write(
        stray.join(util::segment_file_name(0)),
        XorShift(5).bytes(40),
    )
    .unwrap();
    fs::remove_file(d.path().join("checkpoint")).unwrap();
    reopen_same("adding a stray queue");
    assert!(!stray.exists());
}

#[test]
fn search_by_timestamp() {
    let d = TestDir::new("search");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let mut stamps = Vec::new();
    for i in 0..12 {
        let r = store.put(msg("Ts", 0, &body(i, 30), None)).unwrap();
        stamps.push(r.store_timestamp);
        if i % 3 == 2 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    for &ts in &stamps {
        let expected = stamps.iter().position(|&s| s >= ts).unwrap() as i64;
        assert_eq!(
            store.search_offset_by_timestamp("Ts", 0, ts).unwrap(),
            expected
        );
    }
    assert_eq!(store.search_offset_by_timestamp("Ts", 0, 0).unwrap(), 0);
    let last = *stamps.last().unwrap();
    assert_eq!(
        store.search_offset_by_timestamp("Ts", 0, last + 1).unwrap(),
        12
    );
    assert_eq!(
        store.search_offset_by_timestamp("None", 0, last).unwrap(),
        0
    );
}

#[test]
fn consumer_offsets_persist() {
    let d = TestDir::new("offsets");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    store.offsets().commit("G1", "T", 0, 42).unwrap();
    store.offsets().commit("G1", "T", 3, 7).unwrap();
    store.offsets().commit("G2", "%RETRY%G2", 0, 1).unwrap();
    assert!(store.offsets().commit("bad group", "T", 0, 1).is_err());
    assert_eq!(store.offsets().query("G1", "T", 0), Some(42));
    assert_eq!(store.offsets().query("G1", "T", 1), None);
    store.shutdown().unwrap();
    drop(store);
    assert!(d.path().join("config/consumerOffset.json").exists());
    let store = MessageStore::open(small_config(d.path())).unwrap();
    assert_eq!(store.offsets().query("G1", "T", 0), Some(42));
    assert_eq!(store.offsets().query("G1", "T", 3), Some(7));
    assert_eq!(store.offsets().query("G2", "%RETRY%G2", 0), Some(1));
    assert_eq!(
        store
            .offsets()
            .query_topic("G1", "T")
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(0, 42), (3, 7)]
    );
    drop(store);
    // A damaged offsets file is reported, not silently reset.
    fs::write(
        d.path().join("config/consumerOffset.json"),
        b"{\"offsetTable\":",
    )
    .unwrap();
    assert!(matches!(
        MessageStore::open(small_config(d.path())),
        Err(StoreError::Corrupt { .. })
    ));
}

fn ck(offsets: &[i64], pop_time: i64) -> PopCheckpoint {
    PopCheckpoint {
        topic: "PT".into(),
        group: "PG".into(),
        queue_id: 1,
        retry: 0,
        start_offset: offsets.first().copied().unwrap_or(0),
        pop_time,
        invisible_time: 30_000,
        revive_queue_id: 3,
        broker_name: "broker-a".into(),
        msg_offsets: offsets.to_vec(),
        acked: pop_store::AckBitmap::default(),
    }
}

#[test]
fn change_invisible_in_the_pop_millisecond_keeps_the_new_checkpoint() {
    let d = TestDir::new("pop-same-ms");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let pop = store.pop();
    let orig = ck(&[10, 11], 1000);
    let (start, pop_time) = (orig.start_offset, orig.pop_time);
    let k = pop.add_checkpoint(orig).unwrap();
    // same start offset, same millisecond as the pop
    let ch = pop.change_invisible(&k, start, pop_time, 60_000).unwrap();
    let new_ck = ch.new_checkpoint.unwrap();
    assert_ne!(new_ck.key(), k);
    assert!(ch.original.acked);
    assert_eq!(
        pop.get(&new_ck.key()).unwrap().unacked_offsets(),
        vec![start]
    );
    store.shutdown().unwrap();
}

#[test]
fn pop_checkpoints_survive_reopen() {
    let d = TestDir::new("pop");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    let pop = store.pop();
    let k1 = pop.add_checkpoint(ck(&[10, 11, 12], 1000)).unwrap();
    let k2 = pop.add_checkpoint(ck(&[20], 2000)).unwrap();
    let a = pop.ack(&k1, 10).unwrap();
    assert_eq!((a.acked, a.not_found, a.completed), (true, false, false));
    assert_eq!(
        pop.ack(&k1, 10).unwrap(),
        AckOutcome::default(),
        "duplicate ack"
    );
    assert!(pop.ack(&k1, 99).unwrap().not_found);
    let ch = pop.change_invisible(&k1, 11, 5000, 60_000).unwrap();
    let new_ck = ch.new_checkpoint.clone().unwrap();
    assert_eq!(new_ck.msg_offsets, vec![11]);
    assert_eq!(new_ck.start_offset, 11);
    assert!(ch.original.acked);
    // A dead handle changes nothing.
    assert!(pop
        .change_invisible(&k1, 11, 6000, 1)
        .unwrap()
        .new_checkpoint
        .is_none());
    let done = pop.ack(&k2, 20).unwrap();
    assert!(done.completed);
    assert!(pop.get(&k2).is_none());
    store.shutdown().unwrap();
    drop(store);

    let store = MessageStore::open(small_config(d.path())).unwrap();
    let pop = store.pop();
    assert_eq!(pop.len(), 2);
    let orig = pop.get(&k1).unwrap();
    assert_eq!(orig.unacked_offsets(), vec![12]);
    assert_eq!(pop.get(&new_ck.key()).unwrap(), new_ck);
    // Expiry: the original revives at 31 000, the new one at 65 000.
    assert!(pop.expired(30_999).is_empty());
    let e = pop.expired(31_000);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1, vec![12]);
    let e = pop.expired(i64::MAX);
    assert_eq!(
        e.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        vec![vec![12], vec![11]]
    );
    assert_eq!(pop.remove(&k1).unwrap().unwrap().key(), k1);
    assert!(pop.remove(&k1).unwrap().is_none());
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(d.path())).unwrap();
    assert_eq!(store.pop().len(), 1);
}

#[test]
fn batch_acks_are_one_log_line_and_survive_reopen() {
    let d = TestDir::new("pop-acks");
    let path = d.path().join("pop/checkpoint.log");
    let (k1, k2);
    {
        let pop = PopStore::open(&path, 10, 1000).unwrap();
        k1 = pop.add_checkpoint(ck(&[10, 11, 12, 13], 1000)).unwrap();
        k2 = pop.add_checkpoint(ck(&[20, 21], 2000)).unwrap();
        let lines = pop.log_lines();
        // Offsets outside the checkpoint are skipped; one line for the rest.
        assert_eq!(pop.ack_many(&k1, [10, 12, 99]).unwrap(), Some((2, false)));
        assert_eq!(pop.log_lines(), lines + 1);
        // Already acked: nothing written.
        assert_eq!(pop.ack_many(&k1, [10, 12]).unwrap(), Some((0, false)));
        assert_eq!(pop.log_lines(), lines + 1);
        // Completing a checkpoint removes it.
        assert_eq!(pop.ack_many(&k2, [20, 21]).unwrap(), Some((2, true)));
        assert!(pop.get(&k2).is_none());
        assert_eq!(pop.ack_many(&k2, [20]).unwrap(), None);
        pop.sync().unwrap();
    }
    let pop = PopStore::open(&path, 10, 1000).unwrap();
    assert_eq!(pop.len(), 1);
    assert_eq!(pop.get(&k1).unwrap().unacked_offsets(), vec![11, 13]);
    assert!(pop.get(&k2).is_none());
}

#[test]
fn pop_store_bounds_compaction_and_torn_log() {
    let d = TestDir::new("popbounds");
    let path = d.path().join("pop/checkpoint.log");
    {
        let pop = PopStore::open(&path, 3, 10).unwrap();
        for t in 0..3 {
            pop.add_checkpoint(ck(&[t], t)).unwrap();
        }
        assert!(matches!(
            pop.add_checkpoint(ck(&[9], 9)),
            Err(StoreError::TooManyCheckpoints { max: 3 })
        ));
        assert!(pop.add_checkpoint(ck(&[], 9)).is_err());
        // Churn: the log is compacted and stays small.
        for i in 0..50 {
            let k = pop.add_checkpoint(ck(&[100 + i], 100 + i)).err();
            assert!(k.is_some());
            let key = ck(&[0], 0).key();
            let removed = pop.remove(&key).unwrap().unwrap();
            pop.add_checkpoint(removed).unwrap();
        }
        assert!(pop.log_lines() <= 11, "{} lines", pop.log_lines());
        pop.sync().unwrap();
    }
    // A torn last line is dropped on replay.
    append_to(&path, b"{\"op\":\"remove\",\"key\":{\"gro");
    let pop = PopStore::open(&path, 3, 10).unwrap();
    assert_eq!(pop.len(), 3);
    assert_eq!(pop.log_lines(), 3);
    drop(pop);
    // Random garbage lines are skipped.
    append_to(&path, &XorShift(3).bytes(500));
    append_to(&path, b"\n");
    let pop = PopStore::open(&path, 3, 10).unwrap();
    assert_eq!(pop.len(), 3);
}

/// Copies a directory tree file by file, as a crash snapshot would see it.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_snapshot_keeps_durable_records() {
    let d = TestDir::new("crash");
    let mut c = small_config(d.path());
    c.flush_mode = FlushMode::Sync;
    let store = MessageStore::open(c).unwrap();
    let mut puts = Vec::new();
    for i in 0..30 {
        let r = store
            .put(msg("K", (i % 3) as i32, &body(i, 150), None))
            .unwrap();
        store.wait_durable(r.end_offset()).await.unwrap();
        puts.push(r);
    }
    store.offsets().commit("G", "K", 0, 3).unwrap();
    store.persist_offsets().unwrap();
    // Snapshot without shutdown, while the store stays open.
    let copy = TestDir::new("crash-copy");
    copy_tree(d.path(), copy.path());
    let recovered = MessageStore::open(small_config(copy.path())).unwrap();
    for r in &puts {
        let m = recovered
            .lookup_by_phys_offset(r.commit_log_offset as i64)
            .unwrap();
        assert_eq!(m.queue_offset, r.queue_offset);
    }
    let total: usize = (0..3).map(|q| pull_all(&recovered, "K", q).len()).sum();
    assert_eq!(total, 30);
    assert_eq!(recovered.offsets().query("G", "K", 0), Some(3));
    drop(store);
}

/// Sync flush answers once the commit log is fsynced; the consume queues and the checkpoint
/// follow later. A crash that loses every write not fsynced (here: queue files cut to nothing and
/// the checkpoint lost, as a power cut may leave them) still finds every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flush_durable_with_queues_lost() {
    let d = TestDir::new("crash-cq");
    let mut c = small_config(d.path());
    c.flush_mode = FlushMode::Sync;
    let store = MessageStore::open(c).unwrap();
    let mut puts = Vec::new();
    for i in 0..40 {
        let r = store
            .put(msg("L", (i % 4) as i32, &body(i, 120), None))
            .unwrap();
        store.wait_durable(r.end_offset()).await.unwrap();
        puts.push(r);
    }
    let copy = TestDir::new("crash-cq-copy");
    copy_tree(d.path(), copy.path());
    drop(store);
    for q in 0..4 {
        let dir = copy.path().join("consumequeue/L").join(q.to_string());
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries {
                fs::write(e.unwrap().path(), b"").unwrap();
            }
        }
    }
    let _ = fs::remove_file(copy.path().join("checkpoint"));
    let recovered = MessageStore::open(small_config(copy.path())).unwrap();
    for r in &puts {
        let m = recovered
            .lookup_by_phys_offset(r.commit_log_offset as i64)
            .unwrap();
        assert_eq!(m.queue_offset, r.queue_offset);
    }
    let total: usize = (0..4).map(|q| pull_all(&recovered, "L", q).len()).sum();
    assert_eq!(total, 40);
}

#[test]
fn hostile_files_never_panic() {
    for seed in 1..=12u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Random bytes as the only commit log segment.
        let d = TestDir::new("hostile-cl");
        fs::create_dir_all(d.path().join("commitlog")).unwrap();
        let len = (rng.next() % 4096) as usize;
        fs::write(segment_path(d.path(), 0), rng.bytes(len)).unwrap();
        if let Ok(store) = MessageStore::open(small_config(d.path())) {
            assert_eq!(store.commit_log().end_offset(), 0);
            assert!(store.topics().is_empty());
            store.put(msg("H", 0, b"ok", None)).unwrap();
            assert_eq!(pull_all(&store, "H", 0).len(), 1);
        }

        // Valid data followed by a random segment, random CQ files and a random checkpoint.
        let d = TestDir::new("hostile-mixed");
        fill(d.path(), 10);
        fs::write(segment_path(d.path(), 4096), rng.bytes(3000)).unwrap();
        let cq = d
            .path()
            .join("consumequeue/R/0")
            .join(util::segment_file_name(0));
        let cq_len = (rng.next() % 200) as usize;
        fs::write(&cq, rng.bytes(cq_len)).unwrap();
        fs::write(d.path().join("checkpoint"), rng.bytes(64)).unwrap();
        fs::create_dir_all(d.path().join("pop")).unwrap();
        fs::write(d.path().join("pop/checkpoint.log"), rng.bytes(300)).unwrap();
        match MessageStore::open(small_config(d.path())) {
            Ok(store) => {
                let n = pull_all(&store, "R", 0).len() + pull_all(&store, "R", 1).len();
                assert!(n <= 10);
                for q in [0, 1] {
                    let r = store
                        .get_messages("R", q, 0, 32, MAX_PULL_BYTES, all)
                        .unwrap();
                    decode_records(&r.body()).unwrap();
                }
                store.put(msg("R", 0, b"after", None)).unwrap();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        // Random bytes as a consume queue of a valid queue (checkpoint intact).
        let d = TestDir::new("hostile-cq");
        fill(d.path(), 10);
        let cq = d
            .path()
            .join("consumequeue/R/1")
            .join(util::segment_file_name(0));
        fs::write(&cq, rng.bytes(100)).unwrap();
        let store = MessageStore::open(small_config(d.path())).unwrap();
        assert_eq!(pull_all(&store, "R", 1).len(), 5);
    }
}

#[test]
fn reading_corrupt_entries_is_an_error_not_a_panic() {
    let d = TestDir::new("readcorrupt");
    let store = MessageStore::open(small_config(d.path())).unwrap();
    for i in 0..4 {
        store.put(msg("X", 0, &body(i, 40), None)).unwrap();
    }
    // The queue's entries are in its file once flushed (until then they are held in memory).
    store.flush().unwrap();
    // Overwrite a live CQ entry behind the store's back: the pull reports corruption.
    let cq = d
        .path()
        .join("consumequeue/X/0")
        .join(util::segment_file_name(0));
    let f = fs::OpenOptions::new().write(true).open(&cq).unwrap();
    let bogus = CqEntry {
        commit_log_offset: 3,
        size: 100,
        tags_code: 0,
    };
    f.write_all_at(&bogus.encode(), 20).unwrap();
    let r = store.get_messages("X", 0, 0, 32, MAX_PULL_BYTES, all);
    assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
    let huge = CqEntry {
        commit_log_offset: i64::MAX - 5,
        size: i32::MAX,
        tags_code: 0,
    };
    f.write_all_at(&huge.encode(), 20).unwrap();
    assert!(store
        .get_messages("X", 0, 1, 32, MAX_PULL_BYTES, all)
        .is_err());
    // Must not panic either way.
    let _ = store.search_offset_by_timestamp("X", 0, 1);
}

/// Consume queue entries held in memory before their write read the same as written ones,
/// across the file boundary and segment switches; a sync writes them all; a queue reloaded
/// without a sync has a prefix of them.
#[test]
fn consume_queue_pending_entries() {
    let d = TestDir::new("cq-pending");
    let root = d.path().join("cq");
    let entry = |i: u64| CqEntry {
        commit_log_offset: (i * 100) as i64,
        size: 100,
        tags_code: i as i64,
    };
    let q = ConsumeQueue::create(&root, "P", 0, 50).unwrap();
    for i in 0..333 {
        q.append(i, entry(i)).unwrap();
        // Every read, wherever it starts, sees every entry appended so far.
        let from = i.saturating_sub(i % 7 + 40);
        let got = q.get(from, 800).unwrap();
        let want: Vec<CqEntry> = (from..=i).map(entry).collect();
        assert_eq!(got, want, "after append {i}, from {from}");
    }
    drop(q);
    let reloaded = ConsumeQueue::load(&root, "P", 0, 50).unwrap();
    let max = reloaded.max_offset();
    assert!(max <= 333, "{max}");
    assert_eq!(
        reloaded.get(0, 800).unwrap(),
        (0..max).map(entry).collect::<Vec<_>>()
    );
    for i in max..400 {
        reloaded.append(i, entry(i)).unwrap();
    }
    reloaded.sync().unwrap();
    drop(reloaded);
    let synced = ConsumeQueue::load(&root, "P", 0, 50).unwrap();
    assert_eq!(synced.max_offset(), 400);
    assert_eq!(
        synced.get(0, 800).unwrap(),
        (0..400).map(entry).collect::<Vec<_>>()
    );
}
