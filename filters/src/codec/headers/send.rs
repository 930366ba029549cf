//! SEND_MESSAGE (10), SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320) headers (section 4.1).
//!
//! Code 10 carries the long (V1) field names; codes 310 and 320 carry the same fields under the
//! one-letter V2 keys `a`..`n`. Use [`SendMessageRequestHeader::from_command_ext`] to read either
//! into the V1 struct, and the `From` conversions to switch between the two forms.

use crate::codec::codes::request_code;
use crate::codec::ext::{CommandHeader, ExtFields, HeaderError};

command_header! {
    /// Request header of SEND_MESSAGE (10), with the long V1 field names.
    pub struct SendMessageRequestHeader {
        /// Producer group of the sender.
        required producer_group: String = "producerGroup",
        /// Topic the message is sent to.
        required topic: String = "topic",
        /// Template topic for auto-creation (`TBW102`).
        required default_topic: String = "defaultTopic",
        /// Queue count used when the topic is auto-created (default 4).
        required default_topic_queue_nums: i32 = "defaultTopicQueueNums",
        /// Target queue id.
        required queue_id: i32 = "queueId",
        /// MessageSysFlag bits of this message (compressed, transaction type, ...).
        required sys_flag: i32 = "sysFlag",
        /// Client time at which the message was created, in ms.
        required born_timestamp: i64 = "bornTimestamp",
        /// User flag, copied into the stored record.
        required flag: i32 = "flag",
        /// Message properties string (`name\u{1}value\u{2}` pairs).
        optional properties: String = "properties",
        /// Number of times the message has been re-consumed (retry topics).
        optional reconsume_times: i32 = "reconsumeTimes",
        /// Whether the producer runs in unit mode.
        optional unit_mode: bool = "unitMode",
        /// Whether the body is a batch encoding.
        optional batch: bool = "batch",
        /// Maximum re-consume count, sent only for retry topics.
        optional max_reconsume_times: i32 = "maxReconsumeTimes",
        /// Logical broker name (inherited `RpcRequestHeader` field; Java 4.9.5+ only).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of SEND_MESSAGE_V2 (310) and SEND_BATCH_MESSAGE (320): the V1 fields under
    /// one-letter keys.
    pub struct SendMessageRequestHeaderV2 {
        /// Producer group (`producerGroup`).
        required a: String = "a",
        /// Topic (`topic`).
        required b: String = "b",
        /// Template topic for auto-creation (`defaultTopic`).
        required c: String = "c",
        /// Queue count for auto-creation (`defaultTopicQueueNums`).
        required d: i32 = "d",
        /// Target queue id (`queueId`).
        required e: i32 = "e",
        /// MessageSysFlag bits (`sysFlag`).
        required f: i32 = "f",
        /// Creation time in ms (`bornTimestamp`).
        required g: i64 = "g",
        /// User flag (`flag`).
        required h: i32 = "h",
        /// Properties string (`properties`).
        optional i: String = "i",
        /// Re-consume count (`reconsumeTimes`).
        optional j: i32 = "j",
        /// Unit mode (`unitMode`).
        optional k: bool = "k",
        /// Maximum re-consume count (`maxReconsumeTimes`).
        optional l: i32 = "l",
        /// Batch body (`batch`).
        optional m: bool = "m",
        /// Logical broker name (`bname`).
        optional n: String = "n",
    }
}

impl From<SendMessageRequestHeaderV2> for SendMessageRequestHeader {
    fn from(v2: SendMessageRequestHeaderV2) -> Self {
        Self {
            producer_group: v2.a,
            topic: v2.b,
            default_topic: v2.c,
            default_topic_queue_nums: v2.d,
            queue_id: v2.e,
            sys_flag: v2.f,
            born_timestamp: v2.g,
            flag: v2.h,
            properties: v2.i,
            reconsume_times: v2.j,
            unit_mode: v2.k,
            max_reconsume_times: v2.l,
            batch: v2.m,
            bname: v2.n,
        }
    }
}

impl From<SendMessageRequestHeader> for SendMessageRequestHeaderV2 {
    fn from(v1: SendMessageRequestHeader) -> Self {
        Self {
            a: v1.producer_group,
            b: v1.topic,
            c: v1.default_topic,
            d: v1.default_topic_queue_nums,
            e: v1.queue_id,
            f: v1.sys_flag,
            g: v1.born_timestamp,
            h: v1.flag,
            i: v1.properties,
            j: v1.reconsume_times,
            k: v1.unit_mode,
            l: v1.max_reconsume_times,
            m: v1.batch,
            n: v1.bname,
        }
    }
}

impl SendMessageRequestHeader {
    /// Whether a send command with this `code` carries the V2 short keys (310, 320 and
    /// SEND_REPLY_MESSAGE_V2 325) rather than the V1 names (10 and every other code).
    pub fn uses_v2_keys(code: i32) -> bool {
        matches!(
            code,
            request_code::SEND_MESSAGE_V2
                | request_code::SEND_BATCH_MESSAGE
                | request_code::SEND_REPLY_MESSAGE_V2
        )
    }

    /// Reads the header of a send command, picking the key set by `code` the way the broker
    /// does: V2 short keys for 310/320/325, V1 long names otherwise (10, 324).
    pub fn from_command_ext(code: i32, ext: &ExtFields) -> Result<Self, HeaderError> {
        if Self::uses_v2_keys(code) {
            SendMessageRequestHeaderV2::from_ext(ext).map(Self::from)
        } else {
            Self::from_ext(ext)
        }
    }

    /// Writes the header under the key set that a command with `code` uses (the inverse of
    /// [`from_command_ext`](Self::from_command_ext)).
    pub fn write_command_ext(&self, code: i32, ext: &mut ExtFields) {
        if Self::uses_v2_keys(code) {
            SendMessageRequestHeaderV2::from(self.clone()).write_ext(ext);
        } else {
            self.write_ext(ext);
        }
    }

    /// Whether the body of a send command with `code` and this header is a batch encoding:
    /// always for SEND_BATCH_MESSAGE (320), otherwise when `batch` (`m`) is true.
    pub fn is_batch(&self, code: i32) -> bool {
        code == request_code::SEND_BATCH_MESSAGE || self.batch == Some(true)
    }
}

command_header! {
    /// Response header of the send commands.
    pub struct SendMessageResponseHeader {
        /// Broker-generated offset message id (batch: the ids joined by commas).
        required msg_id: String = "msgId",
        /// Queue the message was stored in.
        required queue_id: i32 = "queueId",
        /// Queue offset of the message (batch: of the first message).
        required queue_offset: i64 = "queueOffset",
        /// Transaction id (the message's `UNIQ_KEY` for transactional sends).
        optional transaction_id: String = "transactionId",
        /// Unique id of a batch (5.x).
        optional batch_uniq_id: String = "batchUniqId",
        /// Handle to recall a delayed message (5.x).
        optional recall_handle: String = "recallHandle",
        /// Region id added by the broker (`DefaultRegion` by default).
        optional msg_region: String = "MSG_REGION",
        /// Whether message tracing is on, added by the broker.
        optional trace_on: bool = "TRACE_ON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::headers::testutil::{check_header, ext};

    fn full_v1() -> SendMessageRequestHeader {
        SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: "TopicA".into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 3,
            sys_flag: 1,
            born_timestamp: 1_712_345_678_901,
            flag: 7,
            properties: Some("UNIQ_KEY\u{1}AC11000100002A9F0000000000000001\u{2}".into()),
            reconsume_times: Some(2),
            unit_mode: Some(false),
            batch: Some(true),
            max_reconsume_times: Some(16),
            bname: Some("broker-a".into()),
        }
    }

    fn minimal_v1() -> SendMessageRequestHeader {
        SendMessageRequestHeader {
            properties: None,
            reconsume_times: None,
            unit_mode: None,
            batch: None,
            max_reconsume_times: None,
            bname: None,
            ..full_v1()
        }
    }

    #[test]
    fn v1_round_trip_and_errors() {
        check_header(&full_v1(), &minimal_v1());
    }

    #[test]
    fn v2_round_trip_and_errors() {
        check_header(
            &SendMessageRequestHeaderV2::from(full_v1()),
            &SendMessageRequestHeaderV2::from(minimal_v1()),
        );
    }

    #[test]
    fn response_round_trip_and_errors() {
        let full = SendMessageResponseHeader {
            msg_id: "7F00000200002A9F0000000000000000".into(),
            queue_id: 1,
            queue_offset: 42,
            transaction_id: Some("0100007F0000C46200001FE7686E0100".into()),
            batch_uniq_id: Some("batch-1".into()),
            recall_handle: Some("handle".into()),
            msg_region: Some("DefaultRegion".into()),
            trace_on: Some(true),
        };
        let minimal = SendMessageResponseHeader {
            msg_id: full.msg_id.clone(),
            queue_id: 1,
            queue_offset: 42,
            ..Default::default()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn v1_v2_conversion_is_lossless() {
        let v1 = full_v1();
        let v2 = SendMessageRequestHeaderV2::from(v1.clone());
        assert_eq!(v2.a, "PG");
        assert_eq!(v2.n.as_deref(), Some("broker-a"));
        assert_eq!(SendMessageRequestHeader::from(v2.clone()), v1);
        // Same values under the other key set.
        let v1_ext = v1.to_ext();
        let v2_ext = v2.to_ext();
        assert_eq!(v1_ext.len(), v2_ext.len());
        assert_eq!(v1_ext.get("topic"), v2_ext.get("b"));
        assert_eq!(v1_ext.get("bornTimestamp"), v2_ext.get("g"));
        assert_eq!(v1_ext.get("bname"), v2_ext.get("n"));
    }

    /// Keys as a Java 4.9 `DefaultMQProducer` sends them with SEND_MESSAGE_V2.
    fn java_v2_ext() -> ExtFields {
        ext(&[
            ("a", "please_rename_unique_group_name"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "2"),
            ("f", "0"),
            ("g", "1712345678901"),
            ("h", "0"),
            (
                "i",
                concat!(
                    "UNIQ_KEY\u{1}7F0000011A2C18B4AAC2527E1D9E0000\u{2}",
                    "WAIT\u{1}true\u{2}TAGS\u{1}TagA\u{2}"
                ),
            ),
            ("j", "0"),
            ("k", "false"),
            ("m", "false"),
            ("n", "broker-a"),
        ])
    }

    #[test]
    fn java_v2_example() {
        let ext = java_v2_ext();
        let v2 = SendMessageRequestHeaderV2::from_ext(&ext).unwrap();
        assert_eq!(v2.b, "TopicTest");
        assert_eq!(v2.e, 2);
        assert_eq!(v2.g, 1_712_345_678_901);
        assert_eq!(v2.k, Some(false));
        assert_eq!(v2.l, None);
        assert_eq!(v2.m, Some(false));
        assert_eq!(v2.to_ext(), ext, "re-encoding keeps keys, values and order");

        let v1 = SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE_V2, &ext)
            .unwrap();
        assert_eq!(v1, SendMessageRequestHeader::from(v2.clone()));
        assert_eq!(v1.producer_group, "please_rename_unique_group_name");
        assert_eq!(v1.topic, "TopicTest");
        assert_eq!(v1.default_topic, "TBW102");
        assert_eq!(v1.default_topic_queue_nums, 4);
        assert_eq!(v1.queue_id, 2);
        assert_eq!(v1.bname.as_deref(), Some("broker-a"));
        assert!(v1.properties.as_deref().unwrap().contains("TAGS\u{1}TagA"));
        assert_eq!(SendMessageRequestHeaderV2::from(v1.clone()), v2);

        // V1 -> wire (long names) -> V1 equals the V2-derived header.
        let long = v1.to_ext();
        assert_eq!(
            long.get("producerGroup"),
            Some("please_rename_unique_group_name")
        );
        assert_eq!(
            SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE, &long).unwrap(),
            v1
        );

        // write_command_ext picks the key set by code.
        let mut short = ExtFields::new();
        v1.write_command_ext(request_code::SEND_BATCH_MESSAGE, &mut short);
        assert_eq!(short, ext);
    }

    #[test]
    fn from_command_ext_picks_names_by_code() {
        let ext = java_v2_ext();
        // V2 keys under code 10 miss the V1 names.
        assert_eq!(
            SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE, &ext),
            Err(HeaderError::Missing {
                field: "producerGroup"
            })
        );
        assert!(
            SendMessageRequestHeader::from_command_ext(request_code::SEND_BATCH_MESSAGE, &ext)
                .is_ok()
        );
        // V2 errors name the short key.
        let mut no_topic = ext.clone();
        no_topic.remove("b");
        assert_eq!(
            SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE_V2, &no_topic),
            Err(HeaderError::Missing { field: "b" })
        );
        let v1_ext = full_v1().to_ext();
        assert_eq!(
            SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE, &v1_ext),
            Ok(full_v1())
        );
    }

    #[test]
    fn batch_detection() {
        let mut h = minimal_v1();
        assert!(!h.is_batch(request_code::SEND_MESSAGE));
        assert!(!h.is_batch(request_code::SEND_MESSAGE_V2));
        assert!(h.is_batch(request_code::SEND_BATCH_MESSAGE));
        h.batch = Some(false);
        assert!(!h.is_batch(request_code::SEND_MESSAGE_V2));
        h.batch = Some(true);
        assert!(h.is_batch(request_code::SEND_MESSAGE_V2));
        assert!(h.is_batch(request_code::SEND_MESSAGE));
    }

    /// `cpp_send_message_v1.req.json`: numbers already coerced to strings, booleans as 0/1.
    #[test]
    fn cpp_send_message_v1() {
        let ext = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "zmDewOu4ndR3m0jQeq9/mQ8cP/U="),
            ("batch", "0"),
            ("bornTimestamp", "1795253568671"),
            ("defaultTopic", "TBW102"),
            ("defaultTopicQueueNums", "4"),
            ("flag", "0"),
            ("producerGroup", "PG_CPP_TEST"),
            (
                "properties",
                concat!(
                    "KEYS\u{1}key-0\u{2}TAGS\u{1}TagA\u{2}",
                    "UNIQ_KEY\u{1}0100007F0000C46200001FE7686E0100\u{2}",
                    "WAIT\u{1}true\u{2}myprop\u{1}v0\u{2}"
                ),
            ),
            ("queueId", "0"),
            ("reconsumeTimes", "0"),
            ("sysFlag", "0"),
            ("topic", "TopicCpp"),
            ("unitMode", "0"),
        ]);
        let h =
            SendMessageRequestHeader::from_command_ext(request_code::SEND_MESSAGE, &ext).unwrap();
        assert_eq!(h.topic, "TopicCpp");
        assert_eq!(h.producer_group, "PG_CPP_TEST");
        assert_eq!(h.default_topic, "TBW102");
        assert_eq!(h.default_topic_queue_nums, 4);
        assert_eq!(h.queue_id, 0);
        assert_eq!(h.sys_flag, 0);
        assert_eq!(h.flag, 0);
        assert_eq!(h.born_timestamp, 1_795_253_568_671);
        assert!(h
            .properties
            .as_deref()
            .unwrap()
            .contains("UNIQ_KEY\u{1}0100007F0000C46200001FE7686E0100\u{2}"));
        assert_eq!(h.reconsume_times, Some(0));
        assert_eq!(h.batch, Some(false));
        assert_eq!(h.unit_mode, Some(false));
        assert_eq!(h.max_reconsume_times, None);
        assert_eq!(h.bname, None);
        assert!(!h.is_batch(request_code::SEND_MESSAGE));
        // Re-encoding drops the unknown keys and writes Java booleans.
        let out = h.to_ext();
        assert!(!out.contains("Signature"));
        assert_eq!(out.get("batch"), Some("false"));
        assert_eq!(SendMessageRequestHeader::from_ext(&out).unwrap(), h);
    }

    /// `cpp_send_message_v1.resp.json`.
    #[test]
    fn cpp_send_message_response() {
        let ext = ext(&[
            ("MSG_REGION", "DefaultRegion"),
            ("TRACE_ON", "true"),
            ("msgId", "7F00000200002A9F0000000000000000"),
            ("queueId", "0"),
            ("queueOffset", "0"),
            ("transactionId", "0100007F0000C46200001FE7686E0100"),
        ]);
        let h = SendMessageResponseHeader::from_ext(&ext).unwrap();
        assert_eq!(
            h,
            SendMessageResponseHeader {
                msg_id: "7F00000200002A9F0000000000000000".into(),
                queue_id: 0,
                queue_offset: 0,
                transaction_id: Some("0100007F0000C46200001FE7686E0100".into()),
                batch_uniq_id: None,
                recall_handle: None,
                msg_region: Some("DefaultRegion".into()),
                trace_on: Some(true),
            }
        );
        let mut missing = ext.clone();
        missing.remove("queueOffset");
        assert_eq!(
            SendMessageResponseHeader::from_ext(&missing),
            Err(HeaderError::Missing {
                field: "queueOffset"
            })
        );
    }
}
