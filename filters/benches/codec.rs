//! Criterion benches of the Remoting codec.
//!
//! * SEND_MESSAGE_V2 with a 1 KiB body, as a Java producer sends it (JSON header) and as a binary
//!   header: decode (frame + header parse), decode + typed header, encode (pass-through of the
//!   original header bytes, and fresh serialization).
//! * A PULL_MESSAGE response carrying 32 stored records of 1 KiB: decode (frame + header), walk the
//!   records without copying (what a proxy needs), full record decode, re-stamping queue ids and
//!   offsets in place (what the pull->pop translator does), and encode.
//!
//! Run: `cargo bench -p rocketmesh-filters --bench codec`. Absolute times on a shared 2-core
//! machine are noise; compare rows of one run.

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rocketmesh_filters::codec::codes::{request_code, response_code, LanguageCode};
use rocketmesh_filters::codec::headers::{PullMessageResponseHeader, SendMessageRequestHeaderV2};
use rocketmesh_filters::codec::message::{
    decode_records, encode_record, patch_records, MessageError, MessageExt, Properties, RecordIter,
};
use rocketmesh_filters::codec::{
    CommandHeader, RemotingCodec, RemotingCommand, ResponseEncoding, SerializeType,
};
use tokio_util::codec::{Decoder, Encoder};

fn send_v2(serialize: SerializeType) -> RemotingCommand {
    let header = SendMessageRequestHeaderV2 {
        a: "please_rename_unique_group_name".into(),
        b: "TopicTest".into(),
        c: "TBW102".into(),
        d: 4,
        e: 3,
        f: 0,
        g: 1_712_345_678_901,
        h: 0,
        i: Some(
            "KEYS\u{1}order-20240405-0001\u{2}TAGS\u{1}TagA\u{2}UNIQ_KEY\u{1}7F00000100002A9F0000000000001234\u{2}WAIT\u{1}true\u{2}"
                .into(),
        ),
        j: Some(0),
        k: Some(false),
        m: Some(false),
        n: Some("broker-a".into()),
        ..SendMessageRequestHeaderV2::default()
    };
    RemotingCommand::request_with_header(request_code::SEND_MESSAGE_V2, &header)
        .with_language(LanguageCode::JAVA)
        .with_version(407)
        .with_opaque(12345)
        .with_serialize_type(serialize)
        .with_body(vec![b'x'; 1024])
}

fn pull_response() -> RemotingCommand {
    let mut body = BytesMut::new();
    let host: SocketAddr = "127.0.0.1:10911".parse().unwrap();
    for i in 0..32 {
        let mut props = Properties::default();
        props.insert("TAGS", "TagA");
        props.insert("KEYS", format!("key-{i}"));
        props.insert("UNIQ_KEY", format!("7F00000100002A9F00000000{i:08X}"));
        props.insert("WAIT", "true");
        let msg = MessageExt {
            queue_id: 3,
            queue_offset: 1000 + i,
            commit_log_offset: 4096 * i,
            born_timestamp: 1_712_345_678_901,
            born_host: host,
            store_timestamp: 1_712_345_678_905,
            store_host: host,
            body: Bytes::from(vec![b'm'; 1024]),
            topic: "TopicTest".into(),
            properties: props,
            ..MessageExt::default()
        };
        encode_record(&msg, &mut body).unwrap();
    }
    let header = PullMessageResponseHeader {
        suggest_which_broker_id: 0,
        next_begin_offset: 1032,
        min_offset: 0,
        max_offset: 5000,
        ..PullMessageResponseHeader::default()
    };
    RemotingCommand::request(request_code::PULL_MESSAGE)
        .with_opaque(77)
        .response_to(response_code::SUCCESS, ResponseEncoding::Json)
        .with_header(&header)
        .with_body(body.freeze())
}

fn wire(cmd: &RemotingCommand) -> Bytes {
    let mut buf = BytesMut::new();
    RemotingCodec::default().encode(cmd, &mut buf).unwrap();
    buf.freeze()
}

fn decode(bytes: &Bytes) -> RemotingCommand {
    let mut src = BytesMut::from(&bytes[..]);
    RemotingCodec::default().decode(&mut src).unwrap().unwrap()
}

fn bench_send(c: &mut Criterion) {
    for (label, serialize) in [
        ("json", SerializeType::Json),
        ("binary", SerializeType::Rocketmq),
    ] {
        let bytes = wire(&send_v2(serialize));
        let mut g = c.benchmark_group(format!("send_message_v2/{label}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("decode", |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut src| black_box(RemotingCodec::default().decode(&mut src).unwrap()),
                BatchSize::SmallInput,
            )
        });
        g.bench_function("decode+typed_header", |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut src| {
                    let cmd = RemotingCodec::default().decode(&mut src).unwrap().unwrap();
                    black_box(SendMessageRequestHeaderV2::from_ext(cmd.ext()).unwrap())
                },
                BatchSize::SmallInput,
            )
        });
        let decoded = decode(&bytes);
        let mut out = BytesMut::with_capacity(4096);
        g.bench_function("encode_pass_through", |b| {
            b.iter(|| {
                out.clear();
                RemotingCodec::default()
                    .encode(black_box(&decoded), &mut out)
                    .unwrap();
            })
        });
        let mut fresh = decoded.clone();
        fresh.drop_raw_header();
        g.bench_function("encode_fresh", |b| {
            b.iter(|| {
                out.clear();
                RemotingCodec::default()
                    .encode(black_box(&fresh), &mut out)
                    .unwrap();
            })
        });
        g.finish();
    }
}

fn bench_pull(c: &mut Criterion) {
    let bytes = wire(&pull_response());
    let mut g = c.benchmark_group("pull_response_32x1KiB");
    g.throughput(Throughput::Elements(32));
    g.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&bytes[..]),
            |mut src| black_box(RemotingCodec::default().decode(&mut src).unwrap()),
            BatchSize::SmallInput,
        )
    });
    let decoded = decode(&bytes);
    g.bench_function("walk_records", |b| {
        b.iter(|| {
            let mut n = 0i64;
            for r in RecordIter::new(black_box(decoded.body())) {
                n += r.unwrap().queue_offset();
            }
            black_box(n)
        })
    });
    g.bench_function("decode_records", |b| {
        b.iter(|| black_box(decode_records(black_box(decoded.body())).unwrap()))
    });
    g.bench_function("restamp_in_place", |b| {
        b.iter_batched(
            || decoded.body().to_vec(),
            |mut body| {
                let mut next = 500i64;
                patch_records::<MessageError, _>(&mut body, |r| {
                    r.set_queue_id(0);
                    r.set_queue_offset(next);
                    next += 1;
                    Ok(())
                })
                .unwrap();
                black_box(body)
            },
            BatchSize::SmallInput,
        )
    });
    let mut out = BytesMut::with_capacity(64 * 1024);
    g.bench_function("encode_pass_through", |b| {
        b.iter(|| {
            out.clear();
            RemotingCodec::default()
                .encode(black_box(&decoded), &mut out)
                .unwrap();
        })
    });
    let mut fresh = decoded.clone();
    fresh.drop_raw_header();
    g.bench_function("encode_fresh", |b| {
        b.iter(|| {
            out.clear();
            RemotingCodec::default()
                .encode(black_box(&fresh), &mut out)
                .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_send, bench_pull);
criterion_main!(benches);
