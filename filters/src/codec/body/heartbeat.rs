//! HEART_BEAT (34) body: `HeartbeatData` (protocol notes 4.10).
//!
//! Java writes enums by name and `subVersion` as a number; the C++ client writes the enums as
//! ordinals, `subVersion` as a string, leaves out `classFilterMode`, `expressionType`,
//! `tagsSet`, `codeSet` and `unitMode`, and ends the body with a newline. Both parse.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::java_enum::java_enum;
use super::json_body;
use super::serde_util::{lenient_i64, null_default};

/// `SubscriptionData.SUB_ALL`: the expression that matches every tag.
pub const SUB_ALL: &str = "*";
/// `ExpressionType.TAG`, the default (and the C++ client's implied) expression type.
pub const EXPRESSION_TYPE_TAG: &str = "TAG";

java_enum! {
    /// How a consumer takes messages (`ConsumeType`).
    pub enum ConsumeType ("ConsumeType"), default ConsumePassively {
        /// Pull consumer (`CONSUME_ACTIVELY`).
        ConsumeActively = 0 => "CONSUME_ACTIVELY",
        /// Push consumer (`CONSUME_PASSIVELY`); the default when absent.
        ConsumePassively = 1 => "CONSUME_PASSIVELY",
        /// Pop consumer (`CONSUME_POP`, 5.x).
        ConsumePop = 2 => "CONSUME_POP",
    }
}

java_enum! {
    /// How a group shares messages (`MessageModel`).
    pub enum MessageModel ("MessageModel"), default Clustering {
        /// Every consumer gets every message.
        Broadcasting = 0 => "BROADCASTING",
        /// Consumers of a group share the queues; the default when absent.
        Clustering = 1 => "CLUSTERING",
    }
}

java_enum! {
    /// Where a new consumer group starts (`ConsumeFromWhere`).
    pub enum ConsumeFromWhere ("ConsumeFromWhere"), default ConsumeFromLastOffset {
        /// Start at the queue's max offset; the default when absent.
        ConsumeFromLastOffset = 0 => "CONSUME_FROM_LAST_OFFSET",
        /// Deprecated: like last offset, but from the min offset on the first boot.
        ConsumeFromLastOffsetAndFromMinWhenBootFirst = 1 => "CONSUME_FROM_LAST_OFFSET_AND_FROM_MIN_WHEN_BOOT_FIRST",
        /// Deprecated: start at the min offset.
        ConsumeFromMinOffset = 2 => "CONSUME_FROM_MIN_OFFSET",
        /// Deprecated: start at the max offset.
        ConsumeFromMaxOffset = 3 => "CONSUME_FROM_MAX_OFFSET",
        /// Start at the queue's min offset.
        ConsumeFromFirstOffset = 4 => "CONSUME_FROM_FIRST_OFFSET",
        /// Start at the consumer's `consumeTimestamp`.
        ConsumeFromTimestamp = 5 => "CONSUME_FROM_TIMESTAMP",
    }
}

/// Java's `String.hashCode()`: `h = 31*h + c` over the UTF-16 code units, wrapping `int`
/// arithmetic. The broker filters consume-queue entries by this code of the tag.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

fn default_expression_type() -> String {
    EXPRESSION_TYPE_TAG.to_owned()
}

fn expression_type_or_tag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(default_expression_type))
}

/// One subscription of a consumer group (`SubscriptionData`).
///
/// Fields are declared in fastjson's (alphabetical) key order so that serialization matches Java.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionData {
    /// Class-filter mode (long removed in practice); absent from C++ bodies.
    #[serde(default, deserialize_with = "null_default")]
    pub class_filter_mode: bool,
    /// Java `String.hashCode()` of every tag in [`tags_set`](Self::tags_set).
    #[serde(default, deserialize_with = "null_default")]
    pub code_set: BTreeSet<i32>,
    /// `TAG` (default) or `SQL92`.
    #[serde(
        default = "default_expression_type",
        deserialize_with = "expression_type_or_tag"
    )]
    pub expression_type: String,
    /// The subscription expression: `*`, `TagA || TagB`, or an SQL92 expression.
    #[serde(default, deserialize_with = "null_default")]
    pub sub_string: String,
    /// Version of the subscription (the client's time in ms); a string in C++ bodies.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub sub_version: i64,
    /// The tags of a TAG expression, trimmed; empty for `*`.
    #[serde(default, deserialize_with = "null_default")]
    pub tags_set: BTreeSet<String>,
    /// The subscribed topic (possibly `%RETRY%<group>`).
    #[serde(default, deserialize_with = "null_default")]
    pub topic: String,
}

impl Default for SubscriptionData {
    fn default() -> Self {
        Self {
            class_filter_mode: false,
            code_set: BTreeSet::new(),
            expression_type: default_expression_type(),
            sub_string: String::new(),
            sub_version: 0,
            tags_set: BTreeSet::new(),
            topic: String::new(),
        }
    }
}

impl SubscriptionData {
    /// Builds a TAG subscription as Java's `FilterAPI.buildSubscriptionData` does.
    ///
    /// `expr` is split on `||`; every part is trimmed and, if not empty, goes into `tags_set`,
    /// with its [`java_string_hash`] in `code_set`. `*` or an empty (or blank) expression
    /// subscribes to everything: empty sets and `sub_string` `"*"`. `sub_version` is left at 0
    /// for the caller to set.
    pub fn from_expression(topic: impl Into<String>, expr: &str) -> Self {
        let mut data = Self {
            topic: topic.into(),
            ..Self::default()
        };
        if expr.trim().is_empty() || expr == SUB_ALL {
            data.sub_string = SUB_ALL.to_owned();
            return data;
        }
        data.sub_string = expr.to_owned();
        for tag in expr.split("||").map(str::trim).filter(|t| !t.is_empty()) {
            data.code_set.insert(java_string_hash(tag));
            data.tags_set.insert(tag.to_owned());
        }
        data
    }

    /// Whether this subscription matches every message (`*` or empty expression, TAG type).
    pub fn is_sub_all(&self) -> bool {
        self.expression_type == EXPRESSION_TYPE_TAG
            && (self.sub_string == SUB_ALL || self.sub_string.trim().is_empty())
    }
}

/// A producer group of the client (`ProducerData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerData {
    /// The producer group.
    #[serde(default, deserialize_with = "null_default")]
    pub group_name: String,
}

/// A consumer group of the client (`ConsumerData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerData {
    /// Where a new group starts consuming.
    #[serde(default, deserialize_with = "null_default")]
    pub consume_from_where: ConsumeFromWhere,
    /// Pull, push or pop.
    #[serde(default, deserialize_with = "null_default")]
    pub consume_type: ConsumeType,
    /// The consumer group.
    #[serde(default, deserialize_with = "null_default")]
    pub group_name: String,
    /// Clustering or broadcasting.
    #[serde(default, deserialize_with = "null_default")]
    pub message_model: MessageModel,
    /// The group's subscriptions (including its `%RETRY%` topic).
    #[serde(default, deserialize_with = "null_default")]
    pub subscription_data_set: Vec<SubscriptionData>,
    /// Unit mode (absent from C++ bodies).
    #[serde(default, deserialize_with = "null_default")]
    pub unit_mode: bool,
}

/// The HEART_BEAT body (`HeartbeatData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatData {
    /// The client id, `ip@instanceName[@unitName]`.
    #[serde(rename = "clientID", default, deserialize_with = "null_default")]
    pub client_id: String,
    /// The client's consumer groups.
    #[serde(rename = "consumerDataSet", default, deserialize_with = "null_default")]
    pub consumer_data_set: Vec<ConsumerData>,
    /// Heartbeat v2 (5.x): fingerprint of the subscription set.
    #[serde(
        rename = "heartbeatFingerprint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_fingerprint: Option<i32>,
    /// The client's producer groups.
    #[serde(rename = "producerDataSet", default, deserialize_with = "null_default")]
    pub producer_data_set: Vec<ProducerData>,
    /// Heartbeat v2 (5.x): the subscriptions were left out because the fingerprint is unchanged.
    #[serde(
        rename = "withoutSub",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub without_sub: Option<bool>,
}

json_body!(HeartbeatData, "HeartbeatData");

#[cfg(test)]
mod tests {
    use super::*;

    const CPP_PRODUCER_AND_PUSH: &str = "{\"clientID\":\"12380-127.0.0.1@DEFAULT\",\"consumerDataSet\":[{\"consumeFromWhere\":0,\"consumeType\":1,\"groupName\":\"CG_CPP_PUSH\",\"messageModel\":1,\"subscriptionDataSet\":[{\"subString\":\"*\",\"subVersion\":\"1795253560643\",\"topic\":\"%RETRY%CG_CPP_PUSH\"},{\"subString\":\"*\",\"subVersion\":\"1795253560643\",\"topic\":\"TopicCpp\"}]}],\"producerDataSet\":[{\"groupName\":\"PG_CPP_TEST\"}]}\n";
    const CPP_CONSUMER_PULL: &str = "{\"clientID\":\"12380-127.0.0.1@DEFAULT\",\"consumerDataSet\":[{\"consumeFromWhere\":0,\"consumeType\":0,\"groupName\":\"CG_CPP_PULL\",\"messageModel\":1}]}\n";
    const CPP_S1_PUSH_REJECTED: &str = "{\"clientID\":\"10287-127.0.0.1@DEFAULT\",\"consumerDataSet\":[{\"consumeFromWhere\":0,\"consumeType\":1,\"groupName\":\"CG_CPP_PUSH\",\"messageModel\":1,\"subscriptionDataSet\":[{\"subString\":\"*\",\"subVersion\":\"1795253383192\",\"topic\":\"%RETRY%CG_CPP_PUSH\"},{\"subString\":\"*\",\"subVersion\":\"1795253383192\",\"topic\":\"TopicCpp\"}]}]}\n";
    const CPP_S1_PRODUCER_ONLY: &str = "{\"clientID\":\"10287-127.0.0.1@DEFAULT\",\"producerDataSet\":[{\"groupName\":\"PG_CPP_TEST\"}]}\n";
    const JAVA_EXAMPLE: &str = r#"{"clientID":"10.0.0.5@12345#81234567890123",
 "consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY",
   "groupName":"cg","messageModel":"CLUSTERING","unitMode":false,
   "subscriptionDataSet":[
     {"classFilterMode":false,"codeSet":[2598919],"expressionType":"TAG","subString":"TagA",
      "subVersion":1712345678901,"tagsSet":["TagA"],"topic":"TopicA"},
     {"classFilterMode":false,"codeSet":[],"expressionType":"TAG","subString":"*",
      "subVersion":1712345678902,"tagsSet":[],"topic":"%RETRY%cg"}]}],
 "producerDataSet":[{"groupName":"CLIENT_INNER_PRODUCER"}]}"#;

    #[test]
    fn cpp_producer_and_push_consumer() {
        let hb = HeartbeatData::parse(CPP_PRODUCER_AND_PUSH.as_bytes()).unwrap();
        assert_eq!(hb.client_id, "12380-127.0.0.1@DEFAULT");
        assert_eq!(hb.producer_data_set.len(), 1);
        assert_eq!(hb.producer_data_set[0].group_name, "PG_CPP_TEST");
        assert_eq!(hb.consumer_data_set.len(), 1);
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.group_name, "CG_CPP_PUSH");
        assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
        assert_eq!(c.message_model, MessageModel::Clustering);
        assert_eq!(
            c.consume_from_where,
            ConsumeFromWhere::ConsumeFromLastOffset
        );
        assert!(!c.unit_mode);
        assert_eq!(c.subscription_data_set.len(), 2);
        let retry = &c.subscription_data_set[0];
        assert_eq!(retry.topic, "%RETRY%CG_CPP_PUSH");
        assert_eq!(retry.sub_string, "*");
        assert_eq!(retry.sub_version, 1_795_253_560_643);
        assert_eq!(retry.expression_type, "TAG");
        assert!(!retry.class_filter_mode);
        assert!(retry.tags_set.is_empty() && retry.code_set.is_empty());
        assert!(retry.is_sub_all());
        assert_eq!(c.subscription_data_set[1].topic, "TopicCpp");
        assert_eq!(hb.heartbeat_fingerprint, None);
        assert_eq!(hb.without_sub, None);
    }

    #[test]
    fn cpp_pull_consumer() {
        let hb = HeartbeatData::parse(CPP_CONSUMER_PULL.as_bytes()).unwrap();
        assert_eq!(hb.client_id, "12380-127.0.0.1@DEFAULT");
        assert!(hb.producer_data_set.is_empty());
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.group_name, "CG_CPP_PULL");
        assert_eq!(c.consume_type, ConsumeType::ConsumeActively);
        assert_eq!(c.message_model, MessageModel::Clustering);
        assert!(c.subscription_data_set.is_empty());
    }

    #[test]
    fn cpp_s1_bodies() {
        let hb = HeartbeatData::parse(CPP_S1_PUSH_REJECTED.as_bytes()).unwrap();
        assert_eq!(hb.client_id, "10287-127.0.0.1@DEFAULT");
        assert!(hb.producer_data_set.is_empty());
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
        let topics: Vec<_> = c
            .subscription_data_set
            .iter()
            .map(|s| s.topic.as_str())
            .collect();
        assert_eq!(topics, ["%RETRY%CG_CPP_PUSH", "TopicCpp"]);
        assert!(c
            .subscription_data_set
            .iter()
            .all(|s| s.sub_version == 1_795_253_383_192));

        let hb = HeartbeatData::parse(CPP_S1_PRODUCER_ONLY.as_bytes()).unwrap();
        assert!(hb.consumer_data_set.is_empty());
        assert_eq!(hb.producer_data_set[0].group_name, "PG_CPP_TEST");
    }

    #[test]
    fn java_example_and_round_trip() {
        let hb = HeartbeatData::parse(JAVA_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(hb.client_id, "10.0.0.5@12345#81234567890123");
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
        let tag_a = &c.subscription_data_set[0];
        assert_eq!(tag_a.sub_version, 1_712_345_678_901);
        assert_eq!(tag_a.tags_set.iter().collect::<Vec<_>>(), ["TagA"]);
        assert_eq!(
            tag_a.code_set.iter().copied().collect::<Vec<_>>(),
            [2598919]
        );
        assert_eq!(
            *tag_a,
            SubscriptionData {
                sub_version: 1_712_345_678_901,
                ..SubscriptionData::from_expression("TopicA", "TagA")
            }
        );
        assert_eq!(hb.producer_data_set[0].group_name, "CLIENT_INNER_PRODUCER");

        // Java form on output: names, sorted keys; and it parses back to the same value.
        let out = String::from_utf8(hb.to_json()).unwrap();
        assert!(out.starts_with(r#"{"clientID":"10.0.0.5@12345#81234567890123","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"cg","messageModel":"CLUSTERING","subscriptionDataSet":[{"classFilterMode":false,"codeSet":[2598919],"expressionType":"TAG","subString":"TagA","subVersion":1712345678901,"tagsSet":["TagA"],"topic":"TopicA"}"#), "{out}");
        assert!(
            out.ends_with(
                r#""unitMode":false}],"producerDataSet":[{"groupName":"CLIENT_INNER_PRODUCER"}]}"#
            ),
            "{out}"
        );
        assert_eq!(HeartbeatData::parse(out.as_bytes()).unwrap(), hb);

        // A C++ body converts to the Java form.
        let cpp = HeartbeatData::parse(CPP_PRODUCER_AND_PUSH.as_bytes()).unwrap();
        let out = String::from_utf8(cpp.to_json()).unwrap();
        assert!(out.contains(r#""consumeType":"CONSUME_PASSIVELY""#));
        assert!(out.contains(r#""subVersion":1795253560643"#));
        assert_eq!(HeartbeatData::parse(out.as_bytes()).unwrap(), cpp);
    }

    #[test]
    fn heartbeat_v2_fields_nulls_and_unknown_keys() {
        let body = br#"{"clientID":"c","heartbeatFingerprint":-17,"withoutSub":true,"future":{"x":[1]},
            "consumerDataSet":[{"groupName":"g","consumeType":"CONSUME_POP","messageModel":null,
              "consumeFromWhere":"5","subscriptionDataSet":[{"topic":"T","subString":"a","expressionType":null,
              "subVersion":null,"tagsSet":null}]}],"producerDataSet":null}"#;
        let hb = HeartbeatData::parse(body).unwrap();
        assert_eq!(hb.heartbeat_fingerprint, Some(-17));
        assert_eq!(hb.without_sub, Some(true));
        let c = &hb.consumer_data_set[0];
        assert_eq!(c.consume_type, ConsumeType::ConsumePop);
        assert_eq!(c.message_model, MessageModel::Clustering);
        assert_eq!(c.consume_from_where, ConsumeFromWhere::ConsumeFromTimestamp);
        assert_eq!(c.subscription_data_set[0].expression_type, "TAG");
        let out = String::from_utf8(hb.to_json()).unwrap();
        assert!(out.contains(r#""heartbeatFingerprint":-17"#));
        assert!(out.ends_with(r#""withoutSub":true}"#));
    }

    #[test]
    fn bad_enums_are_errors() {
        let err = HeartbeatData::parse(br#"{"consumerDataSet":[{"consumeType":7}]}"#).unwrap_err();
        assert!(err.to_string().contains("ConsumeType"), "{err}");
        let err = HeartbeatData::parse(br#"{"consumerDataSet":[{"messageModel":"CLUSTER"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("HeartbeatData"), "{err}");
        assert!(HeartbeatData::parse(b"").is_err());
        assert!(HeartbeatData::parse(
            br#"{"consumerDataSet":[{"subscriptionDataSet":[{"subVersion":"x"}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn enum_names_and_ordinals() {
        for c in ConsumeFromWhere::ALL {
            assert_eq!(ConsumeFromWhere::from_name(c.name()), Some(*c));
            assert_eq!(ConsumeFromWhere::from_ordinal(c.ordinal().into()), Some(*c));
        }
        assert_eq!(ConsumeType::ConsumePop.ordinal(), 2);
        assert_eq!(MessageModel::Broadcasting.to_string(), "BROADCASTING");
    }

    #[test]
    fn java_hash_and_expressions() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("TagA"), 2598919);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE (overflow wraps).
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        // Non-BMP characters hash as two UTF-16 surrogates: "😀" = D83D DE00.
        assert_eq!(java_string_hash("😀"), 0xD83D * 31 + 0xDE00);
        assert_eq!(java_string_hash("é"), 0xE9);

        let s = SubscriptionData::from_expression("T", " TagA || TagB ||  || TagA");
        assert_eq!(s.sub_string, " TagA || TagB ||  || TagA");
        assert_eq!(s.tags_set.iter().collect::<Vec<_>>(), ["TagA", "TagB"]);
        assert_eq!(s.code_set.len(), 2);
        assert!(s.code_set.contains(&java_string_hash("TagB")));
        for all in ["*", "", "  "] {
            let s = SubscriptionData::from_expression("T", all);
            assert_eq!(s.sub_string, "*");
            assert!(s.tags_set.is_empty() && s.code_set.is_empty() && s.is_sub_all());
        }
    }
}
