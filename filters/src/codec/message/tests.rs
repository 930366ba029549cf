//! Tests of the record codec against a real pull body and hostile inputs.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::properties::keys;
use super::record::{body_crc, reconsume_times_position, MIN_RECORD_LEN};
use super::*;

/// Body of a real PULL_MESSAGE response (two records stored from a C++ producer), from
/// `fixtures/frames/cpp-client_vs_rust-server/cpp_pull_message_found.resp.json`.
const PULL_BODY_HEX: &str = concat!(
    "0000010cdaa320a74edbb25a00000000000000000000000000000000000000000000000000000000000001a1fd73849f",
    "7f00000100008f62000001a1fd7384a57f00000200002a9f0000000000000000000000000000001868656c6c6f206672",
    "6f6d2063707020636c69656e7420233008546f7069634370700091544147530154616741024b455953016b65792d3002",
    "57414954017472756502434c55535445520144656661756c74436c7573746572024d53475f524547494f4e0144656661",
    "756c74526567696f6e02554e49515f4b4559013031303030303746303030304334363230303030314645373638364530",
    "313030026d7970726f700176300254524143455f4f4e0174727565020000010cdaa320a749b676430000000000000000",
    "0000000000000001000000000000043000000000000001a1fd7384be7f00000100008f62000001a1fd7384bf7f000002",
    "00002a9f0000000000000000000000000000001868656c6c6f2066726f6d2063707020636c69656e7420233408546f70",
    "696343707000914b455953016b65792d340254414753015461674102434c55535445520144656661756c74436c757374",
    "65720254524143455f4f4e0174727565024d53475f524547494f4e0144656661756c74526567696f6e02554e49515f4b",
    "4559013031303030303746303030304334363230303030334545373638364530353030026d7970726f70017634025741",
    "4954017472756502",
);

fn pull_body() -> Bytes {
    Bytes::from(hex::decode(PULL_BODY_HEX).unwrap())
}

fn encode(msg: &MessageExt) -> Bytes {
    let mut out = BytesMut::new();
    let n = encode_record(msg, &mut out).unwrap();
    assert_eq!(n, out.len());
    out.freeze()
}

fn sample(topic: &str, version: MessageVersion, born: &str, store: &str) -> MessageExt {
    MessageExt {
        version,
        queue_id: 7,
        flag: 3,
        queue_offset: 1234,
        commit_log_offset: 987_654_321,
        sys_flag: sysflag::MULTI_TAGS | sysflag::TRANSACTION_COMMIT,
        born_timestamp: 1_700_000_000_000,
        born_host: born.parse().unwrap(),
        store_timestamp: 1_700_000_000_005,
        store_host: store.parse().unwrap(),
        reconsume_times: 2,
        prepared_transaction_offset: 42,
        body: Bytes::from_static(b"payload \x00\x01\x02 bytes"),
        topic: topic.to_owned(),
        properties: [
            (keys::TAGS, "a||b"),
            (keys::KEYS, "k1 k2"),
            (keys::UNIQ_KEY, "ID"),
        ]
        .into_iter()
        .collect(),
        ..MessageExt::default()
    }
}

#[test]
fn decodes_real_pull_body() {
    let body = pull_body();
    assert_eq!(body.len(), 536);
    let msgs = decode_records(&body).unwrap();
    assert_eq!(msgs.len(), 2);
    let store: SocketAddr = "127.0.0.2:10911".parse().unwrap();
    let born: SocketAddr = "127.0.0.1:36706".parse().unwrap();
    for (i, (m, n)) in msgs.iter().zip([0, 4]).enumerate() {
        assert_eq!(m.store_size, 268);
        assert_eq!(m.version, MessageVersion::V1);
        assert_eq!(m.topic, "TopicCpp");
        assert_eq!(m.queue_id, 0);
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.sys_flag, 0);
        assert_eq!(m.flag, 0);
        assert_eq!(m.reconsume_times, 0);
        assert_eq!(m.born_host, born);
        assert_eq!(m.store_host, store);
        assert_eq!(m.body, format!("hello from cpp client #{n}").as_bytes());
        m.check_crc().unwrap();
        assert_eq!(m.properties.tags(), Some("TagA"));
        assert_eq!(
            m.properties.keys().collect::<Vec<_>>(),
            [format!("key-{n}")]
        );
        assert_eq!(m.properties.get("myprop"), Some(format!("v{n}").as_str()));
        assert_eq!(m.properties.get(keys::WAIT), Some("true"));
        assert_eq!(m.properties.get(keys::CLUSTER), Some("DefaultCluster"));
        assert_eq!(m.properties.get(keys::MSG_REGION), Some("DefaultRegion"));
        assert_eq!(m.properties.get(keys::TRACE_ON), Some("true"));
        assert_eq!(m.properties.len(), 8);
    }
    assert_eq!(msgs[0].commit_log_offset, 0);
    assert_eq!(msgs[1].commit_log_offset, 1072);
    assert_eq!(msgs[0].born_timestamp, 1_795_253_568_671);
    assert_eq!(msgs[0].store_timestamp, 1_795_253_568_677);
    assert_eq!(msgs[0].body_crc, 1_323_020_890);
    assert_eq!(msgs[1].body_crc, 1_236_694_595);
    assert_eq!(
        msgs[0].properties.uniq_key(),
        Some("0100007F0000C46200001FE7686E0100")
    );
    assert_eq!(
        msgs[1].properties.uniq_key(),
        Some("0100007F0000C46200003EE7686E0500")
    );
    assert_eq!(msgs[0].offset_msg_id(), "7F00000200002A9F0000000000000000");
    assert_eq!(msgs[1].offset_msg_id(), "7F00000200002A9F0000000000000430");

    // Zero copy: the bodies point into the input buffer.
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    assert!(range.contains(&(msgs[0].body.as_ptr() as usize)));

    // Byte-exact re-encoding.
    let mut out = BytesMut::new();
    for m in &msgs {
        encode_record(m, &mut out).unwrap();
    }
    assert_eq!(&out[..], &body[..]);

    // Single-record decode.
    let (first, used) = decode_record(&body).unwrap();
    assert_eq!(used, 268);
    assert_eq!(first, msgs[0]);
}

#[test]
fn record_iter_views() {
    let body = pull_body();
    let views: Vec<_> = RecordIter::new(&body).collect::<Result<_, _>>().unwrap();
    assert_eq!(views.len(), 2);
    let v = &views[1];
    assert_eq!(v.offset(), 268);
    assert_eq!(v.len(), 268);
    assert_eq!(v.queue_id(), 0);
    assert_eq!(v.queue_offset(), 1);
    assert_eq!(v.commit_log_offset(), 1072);
    assert_eq!(v.sys_flag(), 0);
    assert_eq!(v.topic(), "TopicCpp");
    assert_eq!(v.body(), b"hello from cpp client #4");
    assert_eq!(v.property(keys::KEYS).unwrap(), Some("key-4"));
    assert!(v.properties_bytes().starts_with(b"KEYS\x01key-4\x02"));
    assert_eq!(
        v.store_host(),
        "127.0.0.2:10911".parse::<SocketAddr>().unwrap()
    );
    v.check_crc().unwrap();
    assert_eq!(v.as_bytes(), &body[268..]);
    assert_eq!(
        v.to_message_ext().unwrap(),
        decode_records(&body).unwrap()[1]
    );

    // A bad second record: first view, then the error, then nothing.
    let mut bad = body.to_vec();
    bad[272] ^= 0xFF;
    let mut it = RecordIter::new(&bad);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(
        it.next().unwrap().unwrap_err(),
        MessageError::BadMagic {
            offset: 268,
            magic: 0x25A3_20A7
        }
    );
    assert!(it.next().is_none());
}

#[test]
fn crc_mismatch_is_detected() {
    let mut body = pull_body().to_vec();
    body[8 + 84 + 4] ^= 1; // first body byte
    let body = Bytes::from(body);
    let msgs = decode_records(&body).unwrap();
    assert!(matches!(
        msgs[0].check_crc(),
        Err(MessageError::CrcMismatch { .. })
    ));
    let v = RecordIter::new(&body).next().unwrap().unwrap();
    assert!(v.check_crc().is_err());
}

#[test]
fn ipv6_hosts_round_trip() {
    for (born, store, extra) in [
        ("[2001:db8::1]:4000", "10.0.0.1:10911", 12),
        ("10.0.0.2:4000", "[fe80::2]:10911", 12),
        ("[::1]:1", "[2001:db8:ffff::9]:65535", 24),
    ] {
        let m = sample("T6", MessageVersion::V1, born, store);
        let enc = encode(&m);
        assert_eq!(enc.len(), m.encoded_len());
        let (d, used) = decode_record(&enc).unwrap();
        assert_eq!(used, enc.len());
        assert_eq!(d.born_host, m.born_host);
        assert_eq!(d.store_host, m.store_host);
        assert_eq!(d.sys_flag, m.effective_sys_flag());
        assert_eq!(d.sys_flag & !0x30, m.sys_flag);
        assert_eq!(
            record::body_length_position(d.sys_flag),
            record::FIXED_PREFIX_LEN + extra
        );
        assert_eq!(d.reconsume_times, 2);
        assert_eq!(d.prepared_transaction_offset, 42);
        assert_eq!(d.body, m.body);
        assert_eq!(d.properties, m.properties);
        d.check_crc().unwrap();
        assert_eq!(encode(&d), enc);
        // offsetMsgId follows the store host family.
        let id_len = if d.store_host.is_ipv6() { 56 } else { 32 };
        assert_eq!(d.offset_msg_id().len(), id_len);
        assert_eq!(
            decode_offset_msg_id(&d.offset_msg_id()).unwrap(),
            (d.store_host, d.commit_log_offset)
        );
    }
}

#[test]
fn v2_record_with_long_topic() {
    let topic: String = "t".repeat(200);
    let m = sample(&topic, MessageVersion::V2, "1.2.3.4:5", "6.7.8.9:10");
    let enc = encode(&m);
    assert_eq!(&enc[4..8], &[0xDA, 0xA3, 0x20, 0xAB]);
    let (d, _) = decode_record(&enc).unwrap();
    assert_eq!(d.version, MessageVersion::V2);
    assert_eq!(d.topic, topic);
    assert_eq!(encode(&d), enc);
    assert_eq!(MessageVersion::for_topic_len(200), MessageVersion::V2);
    assert_eq!(MessageVersion::for_topic_len(127), MessageVersion::V1);
    // The same topic does not fit v1 (Java reads a signed byte).
    let v1 = MessageExt {
        version: MessageVersion::V1,
        ..m.clone()
    };
    assert_eq!(
        encode_record(&v1, &mut BytesMut::new()).unwrap_err(),
        MessageError::TooLong {
            field: "topic",
            len: 200,
            max: 127
        }
    );
    // A v1 record whose length byte is >= 0x80 is rejected, as Java's signed read fails.
    let mut m127 = m.clone();
    m127.version = MessageVersion::V1;
    m127.topic = "u".repeat(127);
    let mut raw = encode(&m127).to_vec();
    let tl = record::body_length_position(0) + 4 + m.body.len();
    assert_eq!(raw[tl], 127);
    raw[tl] = 0x80;
    assert!(matches!(
        decode_record(&Bytes::from(raw)),
        Err(MessageError::NegativeLength { field: "topic", .. })
    ));
}

#[test]
fn patching_in_place() {
    let body = pull_body();
    let original = decode_records(&body).unwrap();
    let mut buf = body.to_vec();
    patch_queue_id(&mut buf, 9).unwrap();
    patch_queue_offset(&mut buf, 77_000).unwrap();
    patch_reconsume_times(&mut buf, 3).unwrap();
    patch_queue_offset(&mut buf[268..], -5).unwrap();
    let patched = decode_records(&Bytes::from(buf.clone())).unwrap();
    let expect0 = MessageExt {
        queue_id: 9,
        queue_offset: 77_000,
        reconsume_times: 3,
        ..original[0].clone()
    };
    let expect1 = MessageExt {
        queue_offset: -5,
        ..original[1].clone()
    };
    assert_eq!(patched, [expect0, expect1]);
    // Only the patched bytes changed.
    let diff: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] != body[i]).collect();
    assert!(diff.iter().all(|&i| (12..16).contains(&i)
        || (20..28).contains(&i)
        || (72..76).contains(&i)
        || (268 + 20..268 + 28).contains(&i)));

    // Reconsume times moves with IPv6 hosts.
    let m = sample("T", MessageVersion::V1, "[::1]:1", "[::2]:2");
    let mut enc = encode(&m).to_vec();
    patch_reconsume_times(&mut enc, 16).unwrap();
    assert_eq!(reconsume_times_position(0x30), 96);
    let (d, _) = decode_record(&Bytes::from(enc)).unwrap();
    assert_eq!(d.reconsume_times, 16);
    assert_eq!(d.prepared_transaction_offset, 42);
    assert_eq!(d.store_timestamp, m.store_timestamp);

    // Patching validates first.
    let mut garbage = vec![0u8; 100];
    assert!(patch_queue_id(&mut garbage, 1).is_err());
    assert!(garbage.iter().all(|&b| b == 0));
    let mut short = body[..200].to_vec();
    assert!(matches!(
        patch_queue_offset(&mut short, 1),
        Err(MessageError::Truncated { .. })
    ));
}

#[test]
fn patch_records_restamps_every_record() {
    let body = pull_body();
    let mut buf = body.to_vec();
    let mut next = 1000i64;
    let n = patch_records(
        &mut buf,
        |r: &mut RecordMut<'_>| -> Result<(), MessageError> {
            assert_eq!(r.topic(), "TopicCpp");
            assert!(r.property(keys::UNIQ_KEY)?.is_some());
            r.set_queue_id(4);
            r.set_queue_offset(next);
            next += 1;
            assert_eq!(r.view().queue_offset(), r.queue_offset());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(n, 2);
    let views: Vec<_> = RecordIter::new(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        views
            .iter()
            .map(|v| (v.queue_id(), v.queue_offset(), v.commit_log_offset()))
            .collect::<Vec<_>>(),
        [(4, 1000, 0), (4, 1001, 1072)]
    );

    // A malformed tail: nothing is modified, the callback never runs.
    let mut bad = body.to_vec();
    bad.truncate(500);
    let before = bad.clone();
    let err = patch_records(
        &mut bad,
        |_r: &mut RecordMut<'_>| -> Result<(), MessageError> { panic!("must not be called") },
    )
    .unwrap_err();
    assert!(matches!(err, MessageError::Truncated { offset: 268, .. }));
    assert_eq!(bad, before);

    // Empty body.
    assert_eq!(
        patch_records(
            &mut [],
            |_r: &mut RecordMut<'_>| -> Result<(), MessageError> { Ok(()) }
        )
        .unwrap(),
        0
    );
}

#[test]
fn every_prefix_of_a_record_is_an_error() {
    let body = pull_body();
    let rec = body.slice(..268);
    for cut in 0..rec.len() {
        let part = rec.slice(..cut);
        assert!(decode_record(&part).is_err(), "prefix {cut}");
        assert!(RecordView::parse(&part).is_err(), "prefix {cut}");
        assert!(
            patch_queue_id(&mut part.to_vec(), 1).is_err(),
            "prefix {cut}"
        );
        if cut > 0 {
            assert!(decode_records(&part).is_err(), "prefix {cut}");
        }
    }
    // Every prefix of the two-record body that is not a record boundary fails.
    for cut in 1..body.len() {
        let r = decode_records(&body.slice(..cut));
        assert_eq!(r.is_ok(), cut == 268, "cut {cut}");
    }
    // Same with an IPv6 / v2 record.
    let enc = encode(&sample(
        &"x".repeat(150),
        MessageVersion::V2,
        "[::1]:1",
        "[::2]:2",
    ));
    for cut in 0..enc.len() {
        assert!(decode_record(&enc.slice(..cut)).is_err(), "v6 prefix {cut}");
    }
}

#[test]
fn lying_store_sizes() {
    let body = pull_body();
    let with_size = |size: i32| {
        let mut b = body.to_vec();
        b[..4].copy_from_slice(&size.to_be_bytes());
        Bytes::from(b)
    };
    // Bigger than the buffer.
    assert!(matches!(
        decode_record(&with_size(1_000_000)),
        Err(MessageError::Truncated {
            needed: 1_000_000,
            ..
        })
    ));
    assert!(decode_record(&with_size(i32::MAX)).is_err());
    // Negative / smaller than the fixed prefix.
    for s in [-1, i32::MIN, 0, 8, 84, (MIN_RECORD_LEN - 1) as i32] {
        assert!(
            matches!(
                decode_record(&with_size(s)),
                Err(MessageError::BadStoreSize { .. })
            ),
            "size {s}"
        );
    }
    // Inside the buffer but not matching the fields.
    for s in [267, 269, 300, 536] {
        assert!(decode_record(&with_size(s)).is_err(), "size {s}");
    }
    // A body length running past storeSize.
    let mut b = body.to_vec();
    b[84..88].copy_from_slice(&1000i32.to_be_bytes());
    assert!(matches!(
        decode_record(&Bytes::from(b)),
        Err(MessageError::Truncated { field: "body", .. })
    ));
    // Negative body and properties lengths.
    let mut b = body.to_vec();
    b[84..88].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(matches!(
        decode_record(&Bytes::from(b)),
        Err(MessageError::NegativeLength { field: "body", .. })
    ));
    let props_len_pos = 84 + 4 + 24 + 1 + 8;
    let mut b = body.to_vec();
    assert_eq!(&b[props_len_pos..props_len_pos + 2], &[0x00, 0x91]);
    b[props_len_pos] = 0x80;
    assert!(matches!(
        decode_record(&Bytes::from(b)),
        Err(MessageError::NegativeLength {
            field: "properties",
            ..
        })
    ));
    // Blank (EOF) records and bad ports.
    let mut b = body.to_vec();
    b[4..8].copy_from_slice(&record::BLANK_MAGIC_CODE.to_be_bytes());
    assert_eq!(
        decode_record(&Bytes::from(b)).unwrap_err(),
        MessageError::BlankRecord { offset: 0 }
    );
    let mut b = body.to_vec();
    b[52..56].copy_from_slice(&70_000i32.to_be_bytes());
    assert!(matches!(
        decode_record(&Bytes::from(b)),
        Err(MessageError::InvalidPort { port: 70_000, .. })
    ));
    // Invalid UTF-8 in topic and properties.
    let mut b = body.to_vec();
    b[84 + 4 + 24 + 1] = 0xFF;
    assert!(matches!(
        decode_record(&Bytes::from(b)),
        Err(MessageError::InvalidUtf8 { field: "topic", .. })
    ));
    let mut b = body.to_vec();
    b[props_len_pos + 3] = 0xFF;
    let b = Bytes::from(b);
    assert!(matches!(
        decode_record(&b),
        Err(MessageError::InvalidUtf8 {
            field: "properties",
            ..
        })
    ));
    // The view still works for the raw bytes; only the properties accessors fail.
    let v = RecordView::parse(&b).unwrap();
    assert!(v.properties().is_err());
    assert_eq!(v.topic(), "TopicCpp");
}

#[test]
fn compressed_record_body() {
    let plain: Vec<u8> = b"compress me ".repeat(500);
    let mut m = sample("Z", MessageVersion::V1, "1.1.1.1:1", "2.2.2.2:2");
    m.body = deflate_body(&plain, DEFAULT_COMPRESS_LEVEL);
    m.sys_flag |= sysflag::COMPRESSED | sysflag::COMPRESSION_ZLIB;
    let enc = encode(&m);
    let (d, _) = decode_record(&enc).unwrap();
    assert!(d.is_compressed());
    assert_eq!(d.body_crc, body_crc(&m.body)); // CRC of the stored (compressed) body
    assert_eq!(
        inflate_body(&d.body, d.sys_flag, plain.len()).unwrap(),
        plain
    );
    assert!(inflate_body(&d.body, d.sys_flag, 100).is_err());
}

#[test]
fn error_messages_are_clear() {
    let body = pull_body();
    let e = decode_record(&body.slice(..100)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "truncated record at offset 0: record (storeSize) needs 268 bytes, 100 available"
    );
    let e = decode_records(&Bytes::from(vec![0u8; 12])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad magic code 0x00000000 in record at offset 0"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let b = Bytes::from(data.clone());
        let _ = decode_records(&b);
        let _ = decode_record(&b);
        let _ = RecordIter::new(&data).count();
        let _ = decode_batch(&b, &BatchLimits::default());
        let _ = inflate_body(&b, sysflag::COMPRESSED, 1 << 16);
        let mut m = data.clone();
        let _ = patch_records(&mut m, |r: &mut RecordMut<'_>| -> Result<(), MessageError> {
            r.set_queue_offset(1);
            Ok(())
        });
    }

    #[test]
    fn mutated_real_records_never_panic(
        idx in 0usize..536,
        val in any::<u8>(),
        cut in 0usize..=536,
    ) {
        let mut data = pull_body().to_vec();
        data[idx] = val;
        data.truncate(cut);
        let b = Bytes::from(data.clone());
        if let Ok(msgs) = decode_records(&b) {
            // Whatever decodes accounts for every byte.
            let total: i64 = msgs.iter().map(|m| i64::from(m.store_size)).sum();
            prop_assert_eq!(total, data.len() as i64);
        }
        let _ = RecordIter::new(&data).count();
    }

    #[test]
    fn encode_decode_round_trip(
        queue_id in any::<i32>(),
        queue_offset in any::<i64>(),
        sys_flag in any::<i32>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        topic in "[A-Za-z0-9_%-]{0,127}",
        v6 in any::<(bool, bool)>(),
        props in proptest::collection::vec(("[A-Z_]{1,8}", "[a-z0-9 ]{1,8}"), 0..6),
    ) {
        let host = |v6: bool| -> SocketAddr {
            if v6 { "[2001:db8::5]:9876".parse().unwrap() } else { "192.168.1.2:9876".parse().unwrap() }
        };
        let m = MessageExt {
            queue_id,
            queue_offset,
            sys_flag,
            born_host: host(v6.0),
            store_host: host(v6.1),
            body: Bytes::from(body),
            topic,
            properties: props.into_iter().collect(),
            ..MessageExt::default()
        };
        let enc = encode(&m);
        let (d, used) = decode_record(&enc).unwrap();
        prop_assert_eq!(used, enc.len());
        prop_assert_eq!(d.queue_id, m.queue_id);
        prop_assert_eq!(d.queue_offset, m.queue_offset);
        prop_assert_eq!(d.sys_flag, m.effective_sys_flag());
        prop_assert_eq!(&d.body, &m.body);
        prop_assert_eq!(&d.topic, &m.topic);
        prop_assert_eq!(&d.properties, &m.properties);
        prop_assert_eq!(encode(&d), enc);
    }
}
