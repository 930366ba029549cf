//! REGISTER_BROKER (103) body: `RegisterBrokerBody`, `TopicConfigSerializeWrapper`,
//! `TopicConfig`, `DataVersion` (protocol notes 4.15).
//!
//! The body is JSON, or, when the request header says `compressed=true`, a zlib stream
//! (`java.util.zip.DeflaterOutputStream`) of length-prefixed parts, as Apache RocketMQ's
//! `RegisterBrokerBody.encode(true)` writes it (all integers big-endian `int32`):
//!
//! 1. `len` + `DataVersion` JSON;
//! 2. topic count, then per topic `len` + `TopicConfig.encode()`: the space-separated line
//!    `topicName readQueueNums writeQueueNums perm topicFilterType`, to which 5.x appends
//!    ` {attributes JSON}` (`topicSysFlag` and `order` are not carried);
//! 3. `len` + the filter server list as a JSON array;
//! 4. (5.x only) count, then per static topic `len` + `TopicQueueMappingInfo` JSON.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Deserializer, Serialize};

use super::java_enum::java_enum;
use super::serde_util::null_default;
use super::{cut, encode_json, json_body, BodyError};

/// Upper bound on the inflated size of a compressed `RegisterBrokerBody` (64 MiB; a broker with
/// 100 000 topics needs about 6 MiB). Guards against zlib bombs.
pub const MAX_INFLATED_REGISTER_BODY: usize = 64 << 20;

const REGISTER_BODY: &str = "RegisterBrokerBody";

java_enum! {
    /// How a topic's tags are filtered (`TopicFilterType`).
    pub enum TopicFilterType ("TopicFilterType"), default SingleTag {
        /// One tag per message; the default.
        SingleTag = 0 => "SINGLE_TAG",
        /// Several tags per message.
        MultiTag = 1 => "MULTI_TAG",
    }
}

/// Reads an `AtomicLong` counter: a number, a decimal string, or `{"value": N}`; `null` is 0.
fn lenient_counter<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    fn from_value(v: &serde_json::Value) -> Option<i64> {
        match v {
            serde_json::Value::Null => Some(0),
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Object(o) => o.get("value").and_then(from_value),
            _ => None,
        }
    }
    let value = serde_json::Value::deserialize(d)?;
    from_value(&value).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid DataVersion counter {}: expected an int64 or {{\"value\":int64}}",
            cut(&value.to_string())
        ))
    })
}

/// Version of a broker's topic configuration (`DataVersion`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVersion {
    /// Change counter; Java's `AtomicLong`, accepted as a number or as `{"value": N}`.
    #[serde(default, deserialize_with = "lenient_counter")]
    pub counter: i64,
    /// 5.x: state version (controller mode); written as 0 by brokers without it.
    #[serde(default, deserialize_with = "null_default")]
    pub state_version: i64,
    /// Time of the last change, ms. Old Java spelled the key `timestatmp`, also accepted.
    #[serde(default, alias = "timestatmp", deserialize_with = "null_default")]
    pub timestamp: i64,
}

json_body!(DataVersion, "DataVersion");

/// A topic's configuration (`TopicConfig`).
///
/// Absent fields take Java's defaults: 16 read and write queues, perm 6 (read + write),
/// `SINGLE_TAG`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TopicConfig {
    /// 5.x topic attributes (`message.type`, ...); omitted from the JSON when empty.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attributes: BTreeMap<String, String>,
    /// Order topic.
    #[serde(deserialize_with = "null_default")]
    pub order: bool,
    /// Permission bits (see [`super::perm`]).
    #[serde(deserialize_with = "null_default")]
    pub perm: i32,
    /// Number of readable queues.
    #[serde(deserialize_with = "null_default")]
    pub read_queue_nums: i32,
    /// Tag filter type.
    #[serde(deserialize_with = "null_default")]
    pub topic_filter_type: TopicFilterType,
    /// The topic.
    #[serde(deserialize_with = "null_default")]
    pub topic_name: String,
    /// Topic system flags (see [`super::topic_sys_flag`]).
    #[serde(deserialize_with = "null_default")]
    pub topic_sys_flag: i32,
    /// Number of writable queues.
    #[serde(deserialize_with = "null_default")]
    pub write_queue_nums: i32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            attributes: BTreeMap::new(),
            order: false,
            perm: super::perm::PERM_READ | super::perm::PERM_WRITE,
            read_queue_nums: Self::DEFAULT_QUEUE_NUMS,
            topic_filter_type: TopicFilterType::SingleTag,
            topic_name: String::new(),
            topic_sys_flag: 0,
            write_queue_nums: Self::DEFAULT_QUEUE_NUMS,
        }
    }
}

json_body!(TopicConfig, "TopicConfig");

impl TopicConfig {
    /// Java's default read / write queue count.
    pub const DEFAULT_QUEUE_NUMS: i32 = 16;

    /// A topic with Java's defaults.
    pub fn new(topic_name: impl Into<String>) -> Self {
        Self {
            topic_name: topic_name.into(),
            ..Self::default()
        }
    }

    /// `TopicConfig.encode()`: `topicName readQueueNums writeQueueNums perm topicFilterType`,
    /// plus ` {attributes JSON}` when there are attributes (5.x appends it always, but a 4.x
    /// name server rejects a sixth part, and an absent part decodes to empty attributes).
    pub fn encode_line(&self) -> String {
        let mut line = format!(
            "{} {} {} {} {}",
            self.topic_name,
            self.read_queue_nums,
            self.write_queue_nums,
            self.perm,
            self.topic_filter_type.name()
        );
        if !self.attributes.is_empty() {
            line.push(' ');
            line.push_str(&String::from_utf8_lossy(&encode_json(&self.attributes)));
        }
        line
    }

    /// `TopicConfig.decode()`: splits on single spaces (trailing empty parts dropped, as Java's
    /// `String.split`), needs at least five parts; the sixth, if any, is attributes JSON and is
    /// ignored when it does not parse (as Java). `None` when the line is malformed.
    pub fn decode_line(line: &str) -> Option<Self> {
        let mut parts: Vec<&str> = line.split(' ').collect();
        while parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        if parts.len() < 5 {
            return None;
        }
        let mut config = Self {
            topic_name: parts[0].to_owned(),
            read_queue_nums: parts[1].parse().ok()?,
            write_queue_nums: parts[2].parse().ok()?,
            perm: parts[3].parse().ok()?,
            topic_filter_type: TopicFilterType::from_name(parts[4])?,
            ..Self::default()
        };
        if let Some(attributes) = parts
            .get(5)
            .and_then(|json| serde_json::from_str::<BTreeMap<String, String>>(json).ok())
        {
            config.attributes = attributes;
        }
        Some(config)
    }
}

/// A broker's topic configurations and their version (`TopicConfigSerializeWrapper`; 5.x
/// `TopicConfigAndMappingSerializeWrapper` adds the static-topic mapping, kept as raw JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicConfigSerializeWrapper {
    /// Version of the table.
    #[serde(default, deserialize_with = "null_default")]
    pub data_version: DataVersion,
    /// 5.x: version of the static-topic mapping; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_data_version: Option<DataVersion>,
    /// Topic name → configuration.
    #[serde(default, deserialize_with = "null_default")]
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    /// 5.x: topic → `TopicQueueMappingDetail` (raw JSON); omitted when empty.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub topic_queue_mapping_detail_map: BTreeMap<String, serde_json::Value>,
    /// 5.x: topic → `TopicQueueMappingInfo` (raw JSON); omitted when empty.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub topic_queue_mapping_info_map: BTreeMap<String, serde_json::Value>,
}

json_body!(TopicConfigSerializeWrapper, "TopicConfigSerializeWrapper");

/// The REGISTER_BROKER body (`RegisterBrokerBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBrokerBody {
    /// Filter server addresses (legacy; normally empty).
    #[serde(default, deserialize_with = "null_default")]
    pub filter_server_list: Vec<String>,
    /// The broker's topics.
    #[serde(default, deserialize_with = "null_default")]
    pub topic_config_serialize_wrapper: TopicConfigSerializeWrapper,
}

json_body!(RegisterBrokerBody, "RegisterBrokerBody");

/// Big-endian length-prefixed reader over the inflated parts.
struct Parts<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Parts<'a> {
    fn layout(message: String) -> BodyError {
        BodyError::Layout {
            body: REGISTER_BODY,
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn read_i32(&mut self, what: &str) -> Result<i32, BodyError> {
        let bytes = self
            .data
            .get(self.pos..self.pos.saturating_add(4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .ok_or_else(|| Self::layout(format!("truncated before the {what}")))?;
        self.pos += 4;
        Ok(i32::from_be_bytes(bytes))
    }

    /// Reads a non-negative count of items that each take at least 4 bytes.
    fn read_count(&mut self, what: &str) -> Result<usize, BodyError> {
        let n = self.read_i32(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() / 4 => Ok(n),
            _ => Err(Self::layout(format!(
                "{what} {n} is negative or exceeds the {} remaining bytes",
                self.remaining()
            ))),
        }
    }

    fn read_part(&mut self, what: &str) -> Result<&'a [u8], BodyError> {
        let len = self.read_i32(what)?;
        let part = usize::try_from(len)
            .ok()
            .and_then(|len| self.data.get(self.pos..self.pos.checked_add(len)?))
            .ok_or_else(|| {
                Self::layout(format!(
                    "{what} length {len} is negative or exceeds the {} remaining bytes",
                    self.remaining()
                ))
            })?;
        self.pos += part.len();
        Ok(part)
    }
}

fn write_part(out: &mut Vec<u8>, part: &[u8]) -> Result<(), BodyError> {
    let len = i32::try_from(part.len()).map_err(|_| BodyError::Encode {
        body: REGISTER_BODY,
        message: format!("part of {} bytes exceeds int32", part.len()),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
    Ok(())
}

fn write_count(out: &mut Vec<u8>, n: usize) -> Result<(), BodyError> {
    let n = i32::try_from(n).map_err(|_| BodyError::Encode {
        body: REGISTER_BODY,
        message: format!("count {n} exceeds int32"),
    })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Inflates a zlib stream, failing once the output would exceed `limit` bytes.
fn inflate_bounded(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut inflated = Vec::new();
    flate2::read::ZlibDecoder::new(body)
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut inflated)
        .map_err(|e| BodyError::Inflate {
            body: REGISTER_BODY,
            message: cut(&e.to_string()),
        })?;
    if inflated.len() > limit {
        return Err(BodyError::InflatedTooLarge {
            body: REGISTER_BODY,
            limit,
        });
    }
    Ok(inflated)
}

impl RegisterBrokerBody {
    /// Decodes the body as the `compressed` request header says: JSON, or the zlib form.
    pub fn decode(body: &[u8], compressed: bool) -> Result<Self, BodyError> {
        if compressed {
            Self::decode_compressed(body)
        } else {
            Self::parse(body)
        }
    }

    /// Encodes the body as JSON, or (`compress`) in the zlib form.
    pub fn encode(&self, compress: bool) -> Result<Vec<u8>, BodyError> {
        if compress {
            self.encode_compressed()
        } else {
            Ok(self.to_json())
        }
    }

    /// Decodes the zlib form (module docs). Inflation stops at [`MAX_INFLATED_REGISTER_BODY`];
    /// the 5.x mapping part is optional (4.x brokers end after the filter server list). Bytes
    /// after the last part are ignored, as Java does.
    pub fn decode_compressed(body: &[u8]) -> Result<Self, BodyError> {
        let inflated = inflate_bounded(body, MAX_INFLATED_REGISTER_BODY)?;
        let mut parts = Parts {
            data: &inflated,
            pos: 0,
        };
        let mut result = Self::default();
        let wrapper = &mut result.topic_config_serialize_wrapper;
        wrapper.data_version = DataVersion::parse(parts.read_part("DataVersion JSON")?)?;

        let topics = parts.read_count("topic count")?;
        for i in 0..topics {
            let line = parts.read_part("topic config")?;
            let config = std::str::from_utf8(line)
                .ok()
                .and_then(TopicConfig::decode_line)
                .ok_or_else(|| {
                    Parts::layout(format!(
                        "topic config #{i} is not `name read write perm filterType`: {:?}",
                        cut(&String::from_utf8_lossy(line))
                    ))
                })?;
            wrapper
                .topic_config_table
                .insert(config.topic_name.clone(), config);
        }

        // Java logs and keeps an empty list when this JSON does not parse.
        let filter_servers = parts.read_part("filter server list JSON")?;
        result.filter_server_list = serde_json::from_slice::<Option<Vec<String>>>(filter_servers)
            .ok()
            .flatten()
            .unwrap_or_default();

        if parts.remaining() > 0 {
            let mappings = parts.read_count("topic queue mapping count")?;
            for i in 0..mappings {
                let json = parts.read_part("topic queue mapping JSON")?;
                let info: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
                    Parts::layout(format!("topic queue mapping #{i}: {}", cut(&e.to_string())))
                })?;
                let topic = info
                    .get("topic")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                result
                    .topic_config_serialize_wrapper
                    .topic_queue_mapping_info_map
                    .insert(topic, info);
            }
        }
        Ok(result)
    }

    /// Encodes the zlib form (module docs) at best compression, as Java's `encode(true)`.
    /// The 5.x mapping count is always written (a 4.x name server ignores trailing bytes, a
    /// 5.x one requires it). `topicSysFlag`, `order` and `topicQueueMappingDetailMap` are not
    /// part of this form.
    pub fn encode_compressed(&self) -> Result<Vec<u8>, BodyError> {
        let wrapper = &self.topic_config_serialize_wrapper;
        let mut raw = Vec::with_capacity(64 + wrapper.topic_config_table.len() * 48);
        write_part(&mut raw, &encode_json(&wrapper.data_version))?;
        write_count(&mut raw, wrapper.topic_config_table.len())?;
        for config in wrapper.topic_config_table.values() {
            write_part(&mut raw, config.encode_line().as_bytes())?;
        }
        write_part(&mut raw, &encode_json(&self.filter_server_list))?;
        write_count(&mut raw, wrapper.topic_queue_mapping_info_map.len())?;
        for info in wrapper.topic_queue_mapping_info_map.values() {
            write_part(&mut raw, &encode_json(info))?;
        }

        let mut encoder = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(raw.len() / 4 + 64),
            flate2::Compression::best(),
        );
        encoder
            .write_all(&raw)
            .and_then(|()| encoder.finish())
            .map_err(|e| BodyError::Encode {
                body: REGISTER_BODY,
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of `rust-broker_to_rust-namesrv/broker_register_broker.req.json` (rocketmq-rust).
    const RUST_REGISTER: &str = "{\"topicConfigSerializeWrapper\":{\"topicQueueMappingInfoMap\":{},\"topicQueueMappingDetailMap\":{},\"mappingDataVersion\":{\"stateVersion\":0,\"timestamp\":0,\"counter\":0},\"topicConfigTable\":{\"TBW102\":{\"topicName\":\"TBW102\",\"readQueueNums\":8,\"writeQueueNums\":8,\"perm\":7,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"broker-a_REPLY_TOPIC\":{\"topicName\":\"broker-a_REPLY_TOPIC\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"rmq_sys_REVIVE_LOG_DefaultCluster\":{\"topicName\":\"rmq_sys_REVIVE_LOG_DefaultCluster\",\"readQueueNums\":8,\"writeQueueNums\":8,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"SELF_TEST_TOPIC\":{\"topicName\":\"SELF_TEST_TOPIC\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"broker-a\":{\"topicName\":\"broker-a\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":7,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"DefaultCluster\":{\"topicName\":\"DefaultCluster\",\"readQueueNums\":16,\"writeQueueNums\":16,\"perm\":7,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"OFFSET_MOVED_EVENT\":{\"topicName\":\"OFFSET_MOVED_EVENT\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"RMQ_SYS_TRANS_HALF_TOPIC\":{\"topicName\":\"RMQ_SYS_TRANS_HALF_TOPIC\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"rmq_sys_SYNC_BROKER_MEMBER__broker-a\":{\"topicName\":\"rmq_sys_SYNC_BROKER_MEMBER__broker-a\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":1,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"RMQ_SYS_TRANS_OP_HALF_TOPIC\":{\"topicName\":\"RMQ_SYS_TRANS_OP_HALF_TOPIC\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"BenchmarkTest\":{\"topicName\":\"BenchmarkTest\",\"readQueueNums\":1024,\"writeQueueNums\":1024,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"rmq_sys_wheel_timer\":{\"topicName\":\"rmq_sys_wheel_timer\",\"readQueueNums\":1,\"writeQueueNums\":1,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}},\"SCHEDULE_TOPIC_XXXX\":{\"topicName\":\"SCHEDULE_TOPIC_XXXX\",\"readQueueNums\":18,\"writeQueueNums\":18,\"perm\":6,\"topicFilterType\":\"SINGLE_TAG\",\"topicSysFlag\":0,\"order\":false,\"attributes\":{}}},\"dataVersion\":{\"stateVersion\":0,\"timestamp\":0,\"counter\":0}},\"filterServerList\":[]}";

    #[test]
    fn rocketmq_rust_register_body() {
        let body = RegisterBrokerBody::parse(RUST_REGISTER.as_bytes()).unwrap();
        assert!(body.filter_server_list.is_empty());
        let w = &body.topic_config_serialize_wrapper;
        assert_eq!(w.data_version, DataVersion::default());
        assert_eq!(w.mapping_data_version, Some(DataVersion::default()));
        assert_eq!(w.topic_config_table.len(), 13);
        let tbw = &w.topic_config_table["TBW102"];
        assert_eq!(
            (tbw.read_queue_nums, tbw.write_queue_nums, tbw.perm),
            (8, 8, 7)
        );
        assert_eq!(tbw.topic_filter_type, TopicFilterType::SingleTag);
        assert!(!tbw.order && tbw.attributes.is_empty());
        assert_eq!(w.topic_config_table["BenchmarkTest"].read_queue_nums, 1024);
        assert_eq!(
            w.topic_config_table["rmq_sys_SYNC_BROKER_MEMBER__broker-a"].perm,
            1
        );
        // JSON round trip.
        assert_eq!(RegisterBrokerBody::parse(&body.to_json()).unwrap(), body);
        // Compressed round trip (mapping version and sys flags are not part of that form).
        let zipped = body.encode(true).unwrap();
        assert_eq!(&zipped[..2], &[0x78, 0xda], "zlib header, best compression");
        let back = RegisterBrokerBody::decode(&zipped, true).unwrap();
        assert_eq!(
            back.topic_config_serialize_wrapper.topic_config_table,
            w.topic_config_table
        );
        assert_eq!(
            back.topic_config_serialize_wrapper.data_version,
            w.data_version
        );
    }

    #[test]
    fn data_version_forms() {
        let v =
            DataVersion::parse(br#"{"timestamp":1712345678901,"counter":{"value":42}}"#).unwrap();
        assert_eq!(
            (v.timestamp, v.counter, v.state_version),
            (1712345678901, 42, 0)
        );
        let v = DataVersion::parse(br#"{"timestatmp":5,"counter":7,"stateVersion":2}"#).unwrap();
        assert_eq!((v.timestamp, v.counter, v.state_version), (5, 7, 2));
        let v = DataVersion::parse(br#"{"counter":null,"timestamp":null}"#).unwrap();
        assert_eq!(v, DataVersion::default());
        assert_eq!(
            v.to_json(),
            br#"{"counter":0,"stateVersion":0,"timestamp":0}"#.to_vec()
        );
        assert!(DataVersion::parse(br#"{"counter":{"value":"x"}}"#).is_err());
        assert!(DataVersion::parse(br#"{"counter":[1]}"#).is_err());
    }

    #[test]
    fn topic_config_lines_and_defaults() {
        let mut c = TopicConfig::new("TopicA");
        assert_eq!(c.encode_line(), "TopicA 16 16 6 SINGLE_TAG");
        assert_eq!(
            TopicConfig::decode_line("TopicA 16 16 6 SINGLE_TAG"),
            Some(c.clone())
        );
        // 5.x always appends a separator, and attributes JSON when there are any.
        assert_eq!(
            TopicConfig::decode_line("TopicA 16 16 6 SINGLE_TAG "),
            Some(c.clone())
        );
        assert_eq!(
            TopicConfig::decode_line("TopicA 16 16 6 SINGLE_TAG {}"),
            Some(c.clone())
        );
        c.attributes.insert("+message.type".into(), "FIFO".into());
        c.topic_filter_type = TopicFilterType::MultiTag;
        let line = c.encode_line();
        assert_eq!(line, r#"TopicA 16 16 6 MULTI_TAG {"+message.type":"FIFO"}"#);
        assert_eq!(TopicConfig::decode_line(&line), Some(c));
        // Unparsable attributes are ignored (Java does the same).
        assert!(TopicConfig::decode_line("T 1 1 6 SINGLE_TAG {\"a b\":1}")
            .unwrap()
            .attributes
            .is_empty());
        for bad in [
            "",
            "T 1 1 6",
            "T x 1 6 SINGLE_TAG",
            "T 1 1 6 NO_TAG",
            "T  1 1 6 SINGLE_TAG",
        ] {
            assert_eq!(TopicConfig::decode_line(bad), None, "{bad:?}");
        }
        let d = TopicConfig::parse(br#"{"topicName":"T","topicFilterType":1}"#).unwrap();
        assert_eq!((d.read_queue_nums, d.write_queue_nums, d.perm), (16, 16, 6));
        assert_eq!(d.topic_filter_type, TopicFilterType::MultiTag);
        assert_eq!(
            d.to_json(),
            br#"{"order":false,"perm":6,"readQueueNums":16,"topicFilterType":"MULTI_TAG","topicName":"T","topicSysFlag":0,"writeQueueNums":16}"#.to_vec()
        );
    }

    #[test]
    fn compressed_layout_and_4x_form() {
        // Build a 4.x stream by hand: no mapping part at the end.
        let mut raw = Vec::new();
        write_part(&mut raw, br#"{"counter":{"value":3},"timestamp":99}"#).unwrap();
        write_count(&mut raw, 2).unwrap();
        write_part(&mut raw, b"A 4 4 6 SINGLE_TAG").unwrap();
        write_part(&mut raw, b"B 1 1 2 MULTI_TAG").unwrap();
        write_part(&mut raw, br#"["10.0.0.9:1"]"#).unwrap();
        let zip = |raw: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        };
        let body = RegisterBrokerBody::decode_compressed(&zip(&raw)).unwrap();
        let w = &body.topic_config_serialize_wrapper;
        assert_eq!((w.data_version.counter, w.data_version.timestamp), (3, 99));
        assert_eq!(w.topic_config_table.len(), 2);
        assert_eq!(w.topic_config_table["B"].perm, 2);
        assert_eq!(body.filter_server_list, ["10.0.0.9:1"]);

        // 5.x adds the mapping part.
        let mut raw5 = raw.clone();
        write_count(&mut raw5, 1).unwrap();
        write_part(&mut raw5, br#"{"topic":"S","bname":"broker-a","epoch":1}"#).unwrap();
        let body5 = RegisterBrokerBody::decode_compressed(&zip(&raw5)).unwrap();
        let info = &body5
            .topic_config_serialize_wrapper
            .topic_queue_mapping_info_map["S"];
        assert_eq!(info["bname"], "broker-a");
        let again = RegisterBrokerBody::decode_compressed(&body5.encode_compressed().unwrap());
        assert_eq!(again.unwrap(), body5);

        // Truncations and bad lengths are errors, never panics.
        for cut_at in 0..raw.len() - 1 {
            let r = RegisterBrokerBody::decode_compressed(&zip(&raw[..cut_at]));
            assert!(r.is_err(), "cut at {cut_at}");
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        let err = RegisterBrokerBody::decode_compressed(&zip(&huge)).unwrap_err();
        assert!(matches!(err, BodyError::Layout { .. }), "{err}");
        let mut neg = Vec::new();
        write_part(&mut neg, b"{}").unwrap();
        write_count(&mut neg, 0).unwrap();
        neg.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(RegisterBrokerBody::decode_compressed(&zip(&neg)).is_err());
        assert!(matches!(
            RegisterBrokerBody::decode_compressed(b"not zlib"),
            Err(BodyError::Inflate { .. })
        ));
        // A zlib bomb stops at the limit.
        let bomb = zip(&vec![0u8; 1 << 20]);
        assert!(matches!(
            inflate_bounded(&bomb, (1 << 20) - 1),
            Err(BodyError::InflatedTooLarge { .. })
        ));
        assert_eq!(inflate_bounded(&bomb, 1 << 20).unwrap().len(), 1 << 20);
    }
}
