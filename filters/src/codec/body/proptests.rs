//! Property tests: the pre-pass and every parse entry point never panic, and the pre-pass only
//! ever adds quotes around bare integer keys.

use proptest::prelude::*;

use super::*;

/// Runs every body parser on `bytes`; only panics matter, results are ignored.
fn parse_all(bytes: &[u8]) {
    let _ = HeartbeatData::parse(bytes);
    let _ = TopicRouteData::parse(bytes);
    let _ = ClusterInfo::parse(bytes);
    let _ = RegisterBrokerBody::decode(bytes, false);
    let _ = RegisterBrokerBody::decode(bytes, true);
    let _ = TopicConfigSerializeWrapper::parse(bytes);
    let _ = DataVersion::parse(bytes);
    let _ = TopicConfig::parse(bytes);
    let _ = TopicConfig::decode_line(&String::from_utf8_lossy(bytes));
    let _ = ConsumerListBody::parse(bytes);
    let _ = LockBatchRequestBody::parse(bytes);
    let _ = LockBatchResponseBody::parse(bytes);
    let _ = QueryAssignmentRequestBody::parse(bytes);
    let _ = QueryAssignmentResponseBody::parse(bytes);
    let _ = SetMessageRequestModeRequestBody::parse(bytes);
    let _ = BatchAckMessageRequestBody::parse(bytes);
    let _ = AckBitSet::from_base64(&String::from_utf8_lossy(bytes));
    let _ = AckBitSet::from_bytes(bytes);
}

/// JSON-ish text: the characters that steer the pre-pass and the parsers, densely mixed.
fn jsonish() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r#"[{}\[\]:,"\\ 0-9\-a-z.\n]{0,64}"#).unwrap()
}

proptest! {
    #[test]
    fn prepass_never_panics_and_only_adds_quotes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let out = quote_bare_integer_keys(&bytes);
        prop_assert!(out.len() >= bytes.len());
        prop_assert_eq!((out.len() - bytes.len()) % 2, 0);
        let stripped: Vec<u8> = out.iter().copied().filter(|&b| b != b'"').collect();
        let orig: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'"').collect();
        prop_assert_eq!(stripped, orig);
    }

    #[test]
    fn prepass_on_jsonish_text(text in jsonish()) {
        let out = quote_bare_integer_keys(text.as_bytes());
        // Valid JSON is never changed.
        if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
            prop_assert_eq!(&*out, text.as_bytes());
        }
        // Idempotent: a second pass finds nothing to quote.
        let twice = quote_bare_integer_keys(&out);
        prop_assert!(matches!(twice, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        parse_all(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_jsonish(text in jsonish()) {
        parse_all(text.as_bytes());
    }

    #[test]
    fn parsers_never_panic_on_mutated_bodies(
        which in 0usize..4,
        pos in any::<prop::sample::Index>(),
        insert in proptest::collection::vec(any::<u8>(), 0..4),
        drop in 0usize..4,
    ) {
        let seeds: [&[u8]; 4] = [
            br#"{"clientID":"c","consumerDataSet":[{"consumeFromWhere":0,"consumeType":1,"groupName":"g","messageModel":1,"subscriptionDataSet":[{"subString":"*","subVersion":"17","topic":"T"}]}]}"#,
            br#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"a"},"brokerName":"b","cluster":"c"}],"filterServerTable":{},"queueDatas":[{"brokerName":"b","perm":6}]}"#,
            br#"{"acks":[{"c":"g","t":"T","r":"0","so":1,"q":0,"rq":0,"pt":1,"it":1,"b":"BQI="}],"brokerName":"b"}"#,
            br#"{"topicConfigSerializeWrapper":{"dataVersion":{"counter":{"value":1},"timestamp":2},"topicConfigTable":{"T":{"topicName":"T"}}},"filterServerList":[]}"#,
        ];
        let seed = seeds[which];
        let at = pos.index(seed.len() + 1);
        let mut body = seed[..at].to_vec();
        body.extend_from_slice(&insert);
        body.extend_from_slice(seed.get(at + drop..).unwrap_or_default());
        parse_all(&body);
    }
}

#[test]
fn compressed_garbage_never_panics() {
    use std::io::Write;
    // Valid zlib streams of arbitrary content exercise the part reader.
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..128), |raw| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            let _ = RegisterBrokerBody::decode_compressed(&e.finish().unwrap());
            Ok(())
        })
        .unwrap();
}
