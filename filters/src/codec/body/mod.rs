//! JSON bodies of Remoting commands.
//!
//! Every body here is what Apache RocketMQ's Java classes write through fastjson
//! (`RemotingSerializable.encode()`), and what the C++ / Go / Rust clients write instead. Parsing is
//! lenient in the ways real peers need (see `docs/remoting-protocol.md`, section 4):
//!
//! * unknown keys are ignored and explicit `null`s mean "absent";
//! * enums are accepted as Java names (`"CLUSTERING"`) or as ordinals (`1`, the C++ client);
//! * fastjson's legacy unquoted integer map keys (`{0:"addr"}`) are quoted by a pre-pass
//!   ([`lenient_json::quote_bare_integer_keys`]) before the JSON parser sees the text.
//!
//! Writing follows Java: camelCase keys in fastjson's (alphabetical) order, enums by name.
//!
//! | body | command | type |
//! |---|---|---|
//! | `HeartbeatData` | HEART_BEAT (34) | [`HeartbeatData`] |
//! | `GetConsumerListByGroupResponseBody` | GET_CONSUMER_LIST_BY_GROUP (38) | [`ConsumerListBody`] |
//! | `LockBatchRequestBody` / `UnlockBatchRequestBody` | LOCK_BATCH_MQ (41) / UNLOCK_BATCH_MQ (42) | [`LockBatchRequestBody`] |
//! | `LockBatchResponseBody` | LOCK_BATCH_MQ (41) response | [`LockBatchResponseBody`] |
//! | `TopicRouteData` | GET_ROUTEINFO_BY_TOPIC (105) response, REGISTER_TOPIC_IN_NAMESRV (217) | [`TopicRouteData`] |
//! | `ClusterInfo` | GET_BROKER_CLUSTER_INFO (106) response | [`ClusterInfo`] |
//! | `RegisterBrokerBody` | REGISTER_BROKER (103) | [`RegisterBrokerBody`] |
//! | `TopicConfigSerializeWrapper` | GET_ALL_TOPIC_CONFIG (21) response | [`TopicConfigSerializeWrapper`] |
//! | `QueryAssignmentRequestBody` / `ResponseBody` | QUERY_ASSIGNMENT (400) | [`QueryAssignmentRequestBody`], [`QueryAssignmentResponseBody`] |
//! | `SetMessageRequestModeRequestBody` | SET_MESSAGE_REQUEST_MODE (401) | [`SetMessageRequestModeRequestBody`] |
//! | `BatchAckMessageRequestBody` | BATCH_ACK_MESSAGE (200151) | [`BatchAckMessageRequestBody`] |
//! | `ConsumeStats` | GET_CONSUME_STATS (208) response | [`ConsumeStats`] |
//! | `TopicStatsTable` | GET_TOPIC_STATS_INFO (202) response | [`TopicStatsTable`] |
//! | `ConsumerConnection` | GET_CONSUMER_CONNECTION_LIST (203) response | [`ConsumerConnection`] |
//! | `TopicList` | GET_ALL_TOPIC_LIST_FROM_NAMESERVER (206) response | [`TopicList`] |
//! | `KVTable` | GET_BROKER_RUNTIME_INFO (28) response | [`KvTable`] |
#![warn(missing_docs)]

mod admin;
mod assignment;
mod batch_ack;
mod consumer;
mod heartbeat;
mod java_enum;
pub mod lenient_json;
mod register;
mod route;
mod serde_util;

use thiserror::Error;

pub use admin::{
    quote_object_keys, Connection, ConsumeStats, ConsumerConnection, GroupList, KvTable,
    OffsetWrapper, QueueTable, TopicList, TopicOffset, TopicStatsTable,
};
pub use assignment::{
    MessageQueueAssignment, MessageRequestMode, QueryAssignmentRequestBody,
    QueryAssignmentResponseBody, SetMessageRequestModeRequestBody,
};
pub use batch_ack::{AckBitSet, BatchAck, BatchAckMessageRequestBody, MAX_BIT_SET_BYTES};
pub use consumer::{
    ConsumerListBody, LockBatchRequestBody, LockBatchResponseBody, MessageQueue,
    UnlockBatchRequestBody,
};
pub use heartbeat::{
    java_string_hash, ConsumeFromWhere, ConsumeType, ConsumerData, HeartbeatData, MessageModel,
    ProducerData, SubscriptionData, EXPRESSION_TYPE_TAG, SUB_ALL,
};
pub use lenient_json::quote_bare_integer_keys;
pub use register::{
    DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigSerializeWrapper, TopicFilterType,
    MAX_INFLATED_REGISTER_BODY,
};
pub use route::{
    perm, topic_sys_flag, BrokerData, ClusterInfo, QueueData, RouteJsonStyle, TopicRouteData,
};

/// Longest piece of parser / input text quoted back in an error message (the input is untrusted).
const MAX_QUOTED: usize = 200;

/// A body could not be decoded (or, for the compressed register form, encoded).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The body is not valid JSON for the expected type.
    #[error("invalid {body} JSON body: {message}")]
    Json {
        /// Which body was being parsed (`"HeartbeatData"`, `"TopicRouteData"`, ...).
        body: &'static str,
        /// The JSON parser's message (cut to 200 characters).
        message: String,
    },
    /// A BatchAck bit set (`"b"`) is not valid Base64.
    #[error("invalid BatchAck bit set: {message}")]
    BitSetBase64 {
        /// The Base64 decoder's message.
        message: String,
    },
    /// A BatchAck bit set is larger than [`MAX_BIT_SET_BYTES`].
    #[error("BatchAck bit set too large: {len} bytes, at most {max} allowed")]
    BitSetTooLarge {
        /// The (decoded, or implied by the Base64 length) size in bytes.
        len: usize,
        /// The limit, [`MAX_BIT_SET_BYTES`].
        max: usize,
    },
    /// The zlib stream of a compressed `RegisterBrokerBody` is corrupt.
    #[error("invalid compressed {body} body: {message}")]
    Inflate {
        /// Which body (`"RegisterBrokerBody"`).
        body: &'static str,
        /// The decompressor's message.
        message: String,
    },
    /// A decompressed body would exceed its size limit.
    #[error("compressed {body} body inflates beyond {limit} bytes")]
    InflatedTooLarge {
        /// Which body.
        body: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The decompressed parts of a compressed body do not have the expected layout.
    #[error("malformed compressed {body} body: {message}")]
    Layout {
        /// Which body.
        body: &'static str,
        /// What was wrong (which part, which length).
        message: String,
    },
    /// Encoding a body failed (only the compressed register form can fail: the zlib writer).
    #[error("cannot encode {body} body: {message}")]
    Encode {
        /// Which body.
        body: &'static str,
        /// What failed.
        message: String,
    },
}

/// Cuts `text` to at most [`MAX_QUOTED`] characters for an error message.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl BodyError {
    /// Builds a [`BodyError::Json`] from a serde error.
    fn json(body: &'static str, err: &serde_json::Error) -> Self {
        Self::Json {
            body,
            message: cut(&err.to_string()),
        }
    }
}

/// Parses a JSON body leniently: bare integer map keys are quoted first, then serde reads it.
fn decode_json<T: serde::de::DeserializeOwned>(
    body: &'static str,
    bytes: &[u8],
) -> Result<T, BodyError> {
    let text = lenient_json::quote_bare_integer_keys(bytes);
    serde_json::from_slice(&text).map_err(|e| BodyError::json(body, &e))
}

/// Serializes a body whose `Serialize` impl cannot fail with serde_json (derived structs of
/// strings, numbers, booleans, sequences and string- or integer-keyed maps, written to a `Vec`).
fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        // Unreachable for the types of this module; never panic in release builds.
        Err(e) => {
            debug_assert!(false, "infallible body serialization failed: {e}");
            Vec::new()
        }
    }
}

/// Implements `parse` / `to_json` for a body type via [`decode_json`] / [`encode_json`].
macro_rules! json_body {
    ($ty:ty, $name:literal) => {
        impl $ty {
            #[doc = concat!("Parses a `", $name, "` JSON body (lenient: unknown keys, `null`s and bare integer map keys are accepted).")]
            pub fn parse(body: &[u8]) -> Result<Self, $crate::codec::body::BodyError> {
                $crate::codec::body::decode_json($name, body)
            }

            #[doc = concat!("Writes the `", $name, "` JSON body as Java (fastjson) does: camelCase keys in alphabetical order.")]
            pub fn to_json(&self) -> Vec<u8> {
                $crate::codec::body::encode_json(self)
            }
        }
    };
}
pub(crate) use json_body;

#[cfg(test)]
mod proptests;
