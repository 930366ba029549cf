//! Bodies of the admin / tool requests (`testdata/reference/tool-requests.md`):
//! GET_CONSUME_STATS (208) [`ConsumeStats`], GET_TOPIC_STATS_INFO (202) [`TopicStatsTable`],
//! GET_CONSUMER_CONNECTION_LIST (203) [`ConsumerConnection`], GET_ALL_TOPIC_LIST_FROM_NAMESERVER
//! (206) [`TopicList`], GET_BROKER_RUNTIME_INFO (28) [`KvTable`].
//!
//! Java writes a `Map<MessageQueue, _>` through fastjson with each key as a bare JSON object,
//! `{{"brokerName":"b","queueId":0,"topic":"T"}:{...}}`, which is not JSON. [`QueueTable`] writes
//! that form and reads it back (a pre-pass, [`quote_object_keys`], turns each object key into a
//! string first); standard JSON with the key as a string holding the object is read as well.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::serde_util::{lenient_i64, null_default};
use super::{encode_json, json_body, lenient_json, BodyError, MessageQueue, SubscriptionData};
use super::{ConsumeFromWhere, ConsumeType, MessageModel};

/// Longest object key [`quote_object_keys`] considers (a `MessageQueue` is far smaller); a
/// longer `{` is left alone, which bounds the pre-pass at `input.len() * MAX_OBJECT_KEY`.
const MAX_OBJECT_KEY: usize = 4096;

/// A map keyed by queue, in queue order.
pub type QueueTable<V> = BTreeMap<MessageQueue, V>;

/// One queue's progress of a group (`OffsetWrapper`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetWrapper {
    /// The queue's max offset on the broker.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub broker_offset: i64,
    /// The group's committed offset.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub consumer_offset: i64,
    /// Store time of the last consumed message (0 when unknown).
    #[serde(default, deserialize_with = "lenient_i64")]
    pub last_timestamp: i64,
    /// 5.x: the furthest pulled offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_offset: Option<i64>,
    /// rocketmesh's broker: messages of this queue popped by the group and not acked yet (its
    /// consumer offset already counts them as consumed). Apache's brokers do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
}

/// GET_CONSUME_STATS (208) response body (`ConsumeStats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumeStats {
    /// The group's consume rate on the broker.
    pub consume_tps: f64,
    /// Progress per queue.
    pub offset_table: QueueTable<OffsetWrapper>,
}

/// One queue's extent (`TopicOffset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicOffset {
    /// Store time of the last message (0 when empty).
    #[serde(default, deserialize_with = "lenient_i64")]
    pub last_update_timestamp: i64,
    /// The queue's max offset.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub max_offset: i64,
    /// The queue's min offset.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub min_offset: i64,
}

/// GET_TOPIC_STATS_INFO (202) response body (`TopicStatsTable`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicStatsTable {
    /// Extent per (write) queue.
    pub offset_table: QueueTable<TopicOffset>,
    /// 5.x: the topic's put rate.
    pub topic_put_tps: Option<f64>,
}

/// One client connection of a group (`Connection`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The client's address as the server sees it.
    #[serde(default, deserialize_with = "null_default")]
    pub client_addr: String,
    /// The client id from its heartbeat.
    #[serde(default, deserialize_with = "null_default")]
    pub client_id: String,
    /// The client's `LanguageCode` name (`JAVA`, `CPP`, `GO`, ...).
    #[serde(default, deserialize_with = "null_default")]
    pub language: String,
    /// The client's version (`MQVersion` ordinal).
    #[serde(default, deserialize_with = "null_default")]
    pub version: i32,
}

/// GET_CONSUMER_CONNECTION_LIST (203) response body (`ConsumerConnection`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerConnection {
    /// The group's connections.
    #[serde(default, deserialize_with = "null_default")]
    pub connection_set: Vec<Connection>,
    /// Where the group starts.
    #[serde(default, deserialize_with = "null_default")]
    pub consume_from_where: ConsumeFromWhere,
    /// Push, pull or pop.
    #[serde(default, deserialize_with = "null_default")]
    pub consume_type: ConsumeType,
    /// Clustering or broadcasting.
    #[serde(default, deserialize_with = "null_default")]
    pub message_model: MessageModel,
    /// The group's subscriptions by topic.
    #[serde(default, deserialize_with = "null_default")]
    pub subscription_table: BTreeMap<String, SubscriptionData>,
}

json_body!(ConsumerConnection, "ConsumerConnection");

/// GET_ALL_TOPIC_LIST_FROM_NAMESERVER (206) response body (`TopicList`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicList {
    /// Set only by brokers answering for themselves; omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_addr: Option<String>,
    /// The topics.
    #[serde(default, deserialize_with = "null_default")]
    pub topic_list: BTreeSet<String>,
}

json_body!(TopicList, "TopicList");

/// QUERY_TOPIC_CONSUME_BY_WHO (300) response body (`GroupList`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupList {
    /// The groups.
    #[serde(default, deserialize_with = "null_default")]
    pub group_list: BTreeSet<String>,
}

json_body!(GroupList, "GroupList");

/// GET_BROKER_RUNTIME_INFO (28) response body (`KVTable`): every value a string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTable {
    /// The entries.
    #[serde(default, deserialize_with = "null_default")]
    pub table: BTreeMap<String, String>,
}

json_body!(KvTable, "KVTable");

/// The wire form of a [`QueueTable`] after [`quote_object_keys`]: string keys.
fn queue_table<'de, D, V>(d: D) -> Result<QueueTable<V>, D::Error>
where
    D: Deserializer<'de>,
    V: DeserializeOwned,
{
    let raw: Option<BTreeMap<String, V>> = Option::deserialize(d)?;
    let mut out = QueueTable::new();
    for (key, value) in raw.unwrap_or_default() {
        let queue: MessageQueue = serde_json::from_str(&key).map_err(|e| {
            serde::de::Error::custom(format!("queue key {}: {e}", super::cut(&key)))
        })?;
        out.insert(queue, value);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsumeStatsWire {
    #[serde(default, deserialize_with = "null_default")]
    consume_tps: f64,
    #[serde(default, deserialize_with = "queue_table")]
    offset_table: QueueTable<OffsetWrapper>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TopicStatsWire {
    #[serde(default, deserialize_with = "queue_table")]
    offset_table: QueueTable<TopicOffset>,
    #[serde(default)]
    topic_put_tps: Option<f64>,
}

/// Parses a body that may hold bare object (and integer) keys.
fn decode_queue_keyed<T: DeserializeOwned>(
    body: &'static str,
    bytes: &[u8],
) -> Result<T, BodyError> {
    let quoted = quote_object_keys(bytes);
    let text = lenient_json::quote_bare_integer_keys(&quoted);
    serde_json::from_slice(&text).map_err(|e| BodyError::json(body, &e))
}

/// Writes `"name":{<queue>:<value>,...}` with fastjson's bare object keys.
fn write_queue_table<V: Serialize>(out: &mut Vec<u8>, name: &str, table: &QueueTable<V>) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":{");
    for (i, (queue, value)) in table.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&encode_json(queue));
        out.push(b':');
        out.extend_from_slice(&encode_json(value));
    }
    out.push(b'}');
}

/// A JSON number for a rate: finite values as serde writes them, anything else as 0.0.
fn tps(value: f64) -> Vec<u8> {
    if value.is_finite() {
        encode_json(&value)
    } else {
        b"0.0".to_vec()
    }
}

impl ConsumeStats {
    /// Parses a `ConsumeStats` body (fastjson's bare queue keys accepted).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let wire: ConsumeStatsWire = decode_queue_keyed("ConsumeStats", body)?;
        Ok(Self {
            consume_tps: wire.consume_tps,
            offset_table: wire.offset_table,
        })
    }

    /// Writes the body as Java does (alphabetical keys, bare queue keys).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = b"{\"consumeTps\":".to_vec();
        out.extend_from_slice(&tps(self.consume_tps));
        out.push(b',');
        write_queue_table(&mut out, "offsetTable", &self.offset_table);
        out.push(b'}');
        out
    }
}

impl TopicStatsTable {
    /// Parses a `TopicStatsTable` body (fastjson's bare queue keys accepted).
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let wire: TopicStatsWire = decode_queue_keyed("TopicStatsTable", body)?;
        Ok(Self {
            offset_table: wire.offset_table,
            topic_put_tps: wire.topic_put_tps,
        })
    }

    /// Writes the body as Java does (alphabetical keys, bare queue keys).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = b"{".to_vec();
        write_queue_table(&mut out, "offsetTable", &self.offset_table);
        if let Some(t) = self.topic_put_tps {
            out.extend_from_slice(b",\"topicPutTps\":");
            out.extend_from_slice(&tps(t));
        }
        out.push(b'}');
        out
    }
}

/// JSON insignificant whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index just past the object starting at `start` (a `{`), if it closes within
/// [`MAX_OBJECT_KEY`] bytes; strings and nesting are followed.
fn object_end(input: &[u8], start: usize) -> Option<usize> {
    let limit = input.len().min(start.saturating_add(MAX_OBJECT_KEY));
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = start;
    while i < limit {
        let b = input[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Deepest nesting [`quote_object_keys`] follows; deeper input is returned unchanged (and left
/// for the parser, which refuses it).
const MAX_DEPTH: usize = 128;
/// Object-key candidates that turn out not to be keys before [`quote_object_keys`] gives up
/// (only malformed input has any, since array elements are never candidates).
const MAX_FAILED_PROBES: usize = 16;

/// Turns fastjson's bare object keys (`{{"queueId":0}:1}`) into string keys holding the object's
/// text (`{"{\"queueId\":0}":1}`), so a JSON parser can read them. Borrowed when there are none;
/// never panics; invalid JSON stays invalid. Work is bounded by `input.len()` times
/// [`MAX_FAILED_PROBES`] probes of at most [`MAX_OBJECT_KEY`] bytes.
pub fn quote_object_keys(input: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    let mut in_string = false;
    let mut expect_key = false;
    // Whether each open container is an object (true) or an array.
    let mut stack: Vec<bool> = Vec::new();
    let mut failed = 0usize;
    while i < input.len() {
        let b = input[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                expect_key = false;
            }
            b'{' if expect_key && failed < MAX_FAILED_PROBES => {
                expect_key = false;
                let key_end = object_end(input, i).and_then(|end| {
                    let mut j = end;
                    while j < input.len() && is_ws(input[j]) {
                        j += 1;
                    }
                    (input.get(j) == Some(&b':')).then_some(end)
                });
                let Some(end) = key_end else {
                    failed += 1;
                    if stack.len() >= MAX_DEPTH {
                        return Cow::Borrowed(input);
                    }
                    stack.push(true);
                    expect_key = true;
                    i += 1;
                    continue;
                };
                let buf = out.get_or_insert_with(|| Vec::with_capacity(input.len() + 64));
                buf.extend_from_slice(&input[copied..i]);
                buf.push(b'"');
                for &c in &input[i..end] {
                    match c {
                        b'"' | b'\\' => {
                            buf.push(b'\\');
                            buf.push(c);
                        }
                        b'\n' | b'\r' | b'\t' => buf.push(b' '),
                        _ => buf.push(c),
                    }
                }
                buf.push(b'"');
                copied = end;
                i = end;
                continue;
            }
            b'{' | b'[' => {
                if stack.len() >= MAX_DEPTH {
                    return Cow::Borrowed(input);
                }
                stack.push(b == b'{');
                expect_key = b == b'{';
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = stack.last() == Some(&true),
            _ if is_ws(b) => {}
            _ => expect_key = false,
        }
        i += 1;
    }
    match out {
        None => Cow::Borrowed(input),
        Some(mut buf) => {
            buf.extend_from_slice(&input[copied..]);
            Cow::Owned(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_stats_round_trips_in_fastjson_form() {
        let java = br#"{"consumeTps":1.5,"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:{"brokerOffset":120,"consumerOffset":118,"lastTimestamp":1700000000000},{"brokerName":"broker-a","queueId":1,"topic":"T"}:{"brokerOffset":7,"consumerOffset":7,"lastTimestamp":0,"pullOffset":7}}}"#;
        let stats = ConsumeStats::parse(java).unwrap();
        assert_eq!(stats.consume_tps, 1.5);
        assert_eq!(stats.offset_table.len(), 2);
        let q0 = MessageQueue::new("T", "broker-a", 0);
        assert_eq!(stats.offset_table[&q0].consumer_offset, 118);
        assert_eq!(
            stats.offset_table[&MessageQueue::new("T", "broker-a", 1)].pull_offset,
            Some(7)
        );
        assert_eq!(stats.to_json(), java.to_vec());
        assert_eq!(ConsumeStats::parse(&stats.to_json()).unwrap(), stats);
    }

    #[test]
    fn topic_stats_round_trip_and_string_keys_are_read_too() {
        let mut t = TopicStatsTable::default();
        t.offset_table.insert(
            MessageQueue::new("T", "b", 3),
            TopicOffset {
                last_update_timestamp: 5,
                max_offset: 9,
                min_offset: 1,
            },
        );
        let json = t.to_json();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"offsetTable":{{"brokerName":"b","queueId":3,"topic":"T"}:{"lastUpdateTimestamp":5,"maxOffset":9,"minOffset":1}}}"#
        );
        assert_eq!(TopicStatsTable::parse(&json).unwrap(), t);
        let standard = br#"{"offsetTable":{"{\"brokerName\":\"b\",\"queueId\":3,\"topic\":\"T\"}":{"lastUpdateTimestamp":5,"maxOffset":9,"minOffset":1}}}"#;
        assert_eq!(TopicStatsTable::parse(standard).unwrap(), t);
    }

    #[test]
    fn object_keys_are_quoted_only_where_they_are_keys() {
        let plain = br#"{"a":[{"b":1},{"c":2}],"d":{"e":"{x}:"}}"#;
        assert!(matches!(quote_object_keys(plain), Cow::Borrowed(_)));
        let quoted = quote_object_keys(br#"{ {"q":"a\"b"} :1}"#);
        assert_eq!(&*quoted, br#"{ "{\"q\":\"a\\\"b\"}" :1}"#);
        // Unbalanced or deep input: no panic, left for the parser to refuse.
        for bad in [&b"{{{{{{"[..], b"{{\"a\":1}", b"{{]}:", b"\"\\"] {
            let _ = quote_object_keys(bad);
            assert!(ConsumeStats::parse(bad).is_err());
        }
        let deep = vec![b'{'; 100_000];
        assert!(ConsumeStats::parse(&deep).is_err());
    }

    #[test]
    fn connection_and_topic_list_bodies() {
        let body = br#"{"connectionSet":[{"clientAddr":"127.0.0.1:5","clientId":"c@1","language":"CPP","version":1}],"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","subscriptionTable":{}}"#;
        let c = ConsumerConnection::parse(body).unwrap();
        assert_eq!(c.connection_set[0].language, "CPP");
        assert_eq!(ConsumerConnection::parse(&c.to_json()).unwrap(), c);
        let list = TopicList::parse(br#"{"topicList":["b","a"]}"#).unwrap();
        assert_eq!(list.to_json(), br#"{"topicList":["a","b"]}"#.to_vec());
    }
}
