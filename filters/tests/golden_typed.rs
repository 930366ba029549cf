//! Typed golden tests: every captured frame's custom header and body parse into their typed forms,
//! and the typed forms write back what they read.
//!
//! A response's type is taken from its request (`X.resp.hex` pairs with `X.req.hex`). For each
//! typed header `H`: `H::from_ext(ext)` succeeds, and `H::from_ext(H::to_ext())` gives the same
//! value, and every key `H` writes carries the captured value, except booleans the C++ client sends
//! as `"0"`/`"1"`, which are written back Java-style as `"false"`/`"true"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use rocketmesh_filters::codec::body::{
    BatchAckMessageRequestBody, ConsumerListBody, HeartbeatData, RegisterBrokerBody,
    RouteJsonStyle, SubscriptionData, TopicRouteData,
};
use rocketmesh_filters::codec::codes::{request_code as rc, response_code};
use rocketmesh_filters::codec::headers::*;
use rocketmesh_filters::codec::message;
use rocketmesh_filters::codec::{CommandHeader, ExtFields, RemotingCodec, RemotingCommand};
use tokio_util::codec::Decoder;

fn frames() -> BTreeMap<PathBuf, RemotingCommand> {
    let mut out = BTreeMap::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frames")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "hex") {
                let bytes = hex::decode(std::fs::read_to_string(&p).unwrap().trim()).unwrap();
                let cmd = RemotingCodec::default()
                    .decode(&mut BytesMut::from(&bytes[..]))
                    .unwrap()
                    .unwrap();
                out.insert(p, cmd);
            }
        }
    }
    out
}

/// Parses `H`, checks the round trip and that written keys carry the captured values.
fn typed<H: CommandHeader + PartialEq + std::fmt::Debug>(name: &str, ext: &ExtFields) -> H {
    let h = H::from_ext(ext).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = h.to_ext();
    assert_eq!(H::from_ext(&written).unwrap(), h, "{name}: round trip");
    for (k, v) in written.iter() {
        let captured = ext
            .get(k)
            .unwrap_or_else(|| panic!("{name}: wrote {k} not captured"));
        let same = captured == v || matches!((captured, v), ("0", "false") | ("1", "true"));
        assert!(same, "{name}: {k} captured {captured:?} written {v:?}");
    }
    h
}

fn request_of(path: &Path, all: &BTreeMap<PathBuf, RemotingCommand>) -> Option<i32> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".resp.hex")?;
    let req = path.with_file_name(format!("{stem}.req.hex"));
    all.get(&req).map(RemotingCommand::code)
}

#[test]
fn every_frame_has_a_typed_reading() {
    let all = frames();
    let mut typed_count = 0;
    for (path, cmd) in &all {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let ext = cmd.ext();
        let body = cmd.body();
        let mut checked = true;
        if !cmd.is_response() {
            match cmd.code() {
                rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                    let h = SendMessageRequestHeader::from_command_ext(cmd.code(), ext)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let mut back = ExtFields::new();
                    h.write_command_ext(cmd.code(), &mut back);
                    assert_eq!(
                        SendMessageRequestHeader::from_command_ext(cmd.code(), &back).unwrap(),
                        h
                    );
                    assert!(!h.topic.is_empty());
                    if let Some(props) = &h.properties {
                        let parsed = message::Properties::parse(props);
                        assert_eq!(parsed.to_wire_string(), *props, "{name}: properties");
                    }
                    if h.is_batch(cmd.code()) {
                        let msgs = message::decode_batch(body, &message::BatchLimits::default())
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        assert!(msgs.len() > 1, "{name}: batch of {}", msgs.len());
                        let again = message::encode_batch(&msgs).unwrap();
                        assert_eq!(&again[..], &body[..], "{name}: batch re-encodes exactly");
                    } else if message::is_compressed(h.sys_flag) {
                        let plain = message::inflate_body(body, h.sys_flag, 4 << 20)
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        assert!(plain.len() >= 4096, "{name}: compressed only above 4 KiB");
                    }
                }
                rc::PULL_MESSAGE => {
                    let h: PullMessageRequestHeader = typed(&name, ext);
                    // the C++ client always posts its subscription with the pull
                    assert!(h.pull_sys_flag().has_subscription(), "{name}");
                    let expr = h.subscription.as_deref().unwrap_or_default();
                    let sub = SubscriptionData::from_expression(&h.topic, expr);
                    assert!(
                        sub.is_sub_all() || !sub.tags_set.is_empty(),
                        "{name}: {expr}"
                    );
                }
                rc::QUERY_CONSUMER_OFFSET => {
                    typed::<QueryConsumerOffsetRequestHeader>(&name, ext);
                }
                rc::UPDATE_CONSUMER_OFFSET => {
                    typed::<UpdateConsumerOffsetRequestHeader>(&name, ext);
                }
                rc::CONSUMER_SEND_MSG_BACK => {
                    typed::<ConsumerSendMsgBackRequestHeader>(&name, ext);
                }
                rc::GET_MAX_OFFSET => {
                    typed::<GetMaxOffsetRequestHeader>(&name, ext);
                }
                rc::GET_MIN_OFFSET => {
                    typed::<GetMinOffsetRequestHeader>(&name, ext);
                }
                rc::UNREGISTER_CLIENT => {
                    typed::<UnregisterClientRequestHeader>(&name, ext);
                }
                rc::GET_CONSUMER_LIST_BY_GROUP => {
                    typed::<GetConsumerListByGroupRequestHeader>(&name, ext);
                }
                rc::GET_ROUTEINFO_BY_TOPIC => {
                    typed::<GetRouteInfoRequestHeader>(&name, ext);
                }
                // The protocol notes' header-only example carries no body.
                rc::HEART_BEAT if body.is_empty() => checked = false,
                rc::HEART_BEAT => {
                    let hb = HeartbeatData::parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(!hb.client_id.is_empty(), "{name}");
                    let again = HeartbeatData::parse(&hb.to_json()).unwrap();
                    assert_eq!(again, hb, "{name}: heartbeat re-encodes");
                }
                rc::REGISTER_BROKER => {
                    let h: RegisterBrokerRequestHeader = typed(&name, ext);
                    let b = RegisterBrokerBody::decode(body, h.compressed.unwrap_or(false))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let again = RegisterBrokerBody::decode(&b.to_json(), false).unwrap();
                    assert_eq!(again, b);
                    let zipped = b.encode(true).unwrap();
                    let unzipped = RegisterBrokerBody::decode(&zipped, true).unwrap();
                    assert_eq!(
                        unzipped
                            .topic_config_serialize_wrapper
                            .topic_config_table
                            .len(),
                        b.topic_config_serialize_wrapper.topic_config_table.len()
                    );
                }
                rc::REGISTER_TOPIC_IN_NAMESRV => {
                    TopicRouteData::parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                rc::POP_MESSAGE => {
                    typed::<PopMessageRequestHeader>(&name, ext);
                }
                rc::ACK_MESSAGE => {
                    let h: AckMessageRequestHeader = typed(&name, ext);
                    let handle = rocketmesh_filters::codec::pop::PopHandle::parse(&h.extra_info)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(handle.queue_offset, h.offset);
                    assert_eq!(handle.to_extra_info(), h.extra_info);
                }
                rc::CHANGE_MESSAGE_INVISIBLETIME => {
                    typed::<ChangeInvisibleTimeRequestHeader>(&name, ext);
                }
                rc::BATCH_ACK_MESSAGE => {
                    let b = BatchAckMessageRequestBody::parse(body)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(!b.acks.is_empty());
                    assert_eq!(BatchAckMessageRequestBody::parse(&b.to_json()).unwrap(), b);
                }
                _ => checked = false,
            }
        } else {
            match (request_of(path, &all), cmd.code()) {
                (Some(rc::GET_ROUTEINFO_BY_TOPIC), response_code::SUCCESS) => {
                    let route =
                        TopicRouteData::parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    for style in [RouteJsonStyle::Standard, RouteJsonStyle::Legacy] {
                        assert_eq!(TopicRouteData::parse(&route.encode(style)).unwrap(), route);
                    }
                }
                (Some(rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2), response_code::SUCCESS) => {
                    let h: SendMessageResponseHeader = typed(&name, ext);
                    // a batch answers with its offsetMsgIds joined by commas
                    for id in h.msg_id.split(',') {
                        let (_, offset) = message::decode_offset_msg_id(id)
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        assert!(offset >= 0);
                    }
                }
                (Some(rc::PULL_MESSAGE), code) => {
                    typed::<PullMessageResponseHeader>(&name, ext);
                    if code == response_code::SUCCESS {
                        let body = Bytes::clone(body);
                        let records = message::decode_records(&body)
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        assert!(!records.is_empty());
                        let mut again = BytesMut::new();
                        for r in &records {
                            message::encode_record(r, &mut again)
                                .unwrap_or_else(|e| panic!("{name}: {e}"));
                        }
                        assert_eq!(&again[..], &body[..], "{name}: records re-encode exactly");
                    }
                }
                (Some(rc::GET_CONSUMER_LIST_BY_GROUP), response_code::SUCCESS) => {
                    let b = ConsumerListBody::parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(!b.consumer_id_list.is_empty());
                }
                (Some(rc::GET_MAX_OFFSET | rc::GET_MIN_OFFSET), response_code::SUCCESS) => {
                    typed::<OffsetResponseHeader>(&name, ext);
                }
                (Some(rc::QUERY_CONSUMER_OFFSET), response_code::SUCCESS) => {
                    typed::<QueryConsumerOffsetResponseHeader>(&name, ext);
                }
                // Responses whose only content is the code (and maybe a remark).
                (Some(_), _) => {
                    checked = body.is_empty();
                }
                (None, _) => checked = false,
            }
        }
        if checked {
            typed_count += 1;
        } else {
            // The frames without a typed reading are listed here on purpose.
            let allowed = [
                "java_unicode_remark.resp.hex",
                "java_heartbeat_minimal.req.hex",
            ];
            assert!(
                allowed.contains(&name.as_str()) || name.contains("pull_response_not_found"),
                "{name}: no typed reading (code {})",
                cmd.code()
            );
        }
    }
    assert!(typed_count >= 55, "typed {typed_count}");
}
