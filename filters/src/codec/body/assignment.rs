//! QUERY_ASSIGNMENT (400) and SET_MESSAGE_REQUEST_MODE (401) bodies (protocol notes 4.16).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::consumer::MessageQueue;
use super::heartbeat::MessageModel;
use super::java_enum::java_enum;
use super::json_body;
use super::serde_util::null_default;

java_enum! {
    /// How a consumer gets messages from an assigned queue (`MessageRequestMode`).
    pub enum MessageRequestMode ("MessageRequestMode"), default Pull {
        /// Classic pull of an exclusively assigned queue; the default.
        Pull = 0 => "PULL",
        /// Pop (shared queues, broker-side offsets).
        Pop = 1 => "POP",
    }
}

/// The QUERY_ASSIGNMENT request body (`QueryAssignmentRequestBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryAssignmentRequestBody {
    /// The requesting client id.
    #[serde(default, deserialize_with = "null_default")]
    pub client_id: String,
    /// The consumer group.
    #[serde(default, deserialize_with = "null_default")]
    pub consumer_group: String,
    /// Clustering or broadcasting.
    #[serde(default, deserialize_with = "null_default")]
    pub message_model: MessageModel,
    /// The allocation strategy name (`AVG`, ...).
    #[serde(default, deserialize_with = "null_default")]
    pub strategy_name: String,
    /// The topic.
    #[serde(default, deserialize_with = "null_default")]
    pub topic: String,
}

json_body!(QueryAssignmentRequestBody, "QueryAssignmentRequestBody");

/// One assigned queue (`MessageQueueAssignment`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueueAssignment {
    /// Free-form attachments (normally empty).
    #[serde(default, deserialize_with = "null_default")]
    pub attachments: BTreeMap<String, String>,
    /// The queue; `queueId` -1 in POP mode means every queue of the broker.
    #[serde(default, deserialize_with = "null_default")]
    pub message_queue: MessageQueue,
    /// PULL or POP.
    #[serde(default, deserialize_with = "null_default")]
    pub mode: MessageRequestMode,
}

/// The QUERY_ASSIGNMENT response body (`QueryAssignmentResponseBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryAssignmentResponseBody {
    /// The queues assigned to the client.
    #[serde(default, deserialize_with = "null_default")]
    pub message_queue_assignments: Vec<MessageQueueAssignment>,
}

json_body!(QueryAssignmentResponseBody, "QueryAssignmentResponseBody");

/// The SET_MESSAGE_REQUEST_MODE request body (`SetMessageRequestModeRequestBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetMessageRequestModeRequestBody {
    /// The consumer group.
    #[serde(default, deserialize_with = "null_default")]
    pub consumer_group: String,
    /// The mode to use for the group on the topic.
    #[serde(default, deserialize_with = "null_default")]
    pub mode: MessageRequestMode,
    /// In POP mode, how many other consumers' queues each consumer also pops (0 = all queues).
    #[serde(default, deserialize_with = "null_default")]
    pub pop_share_queue_num: i32,
    /// The topic.
    #[serde(default, deserialize_with = "null_default")]
    pub topic: String,
}

json_body!(
    SetMessageRequestModeRequestBody,
    "SetMessageRequestModeRequestBody"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_assignment_bodies() {
        let req = QueryAssignmentRequestBody::parse(
            br#"{"clientId":"c","consumerGroup":"cg","messageModel":"CLUSTERING","strategyName":"AVG","topic":"T"}"#,
        )
        .unwrap();
        assert_eq!(req.message_model, MessageModel::Clustering);
        assert_eq!(req.strategy_name, "AVG");
        assert_eq!(
            req.to_json(),
            br#"{"clientId":"c","consumerGroup":"cg","messageModel":"CLUSTERING","strategyName":"AVG","topic":"T"}"#.to_vec()
        );

        let body = br#"{"messageQueueAssignments":[{"messageQueue":{"brokerName":"b","queueId":-1,"topic":"T"},"mode":"POP","attachments":{}}]}"#;
        let resp = QueryAssignmentResponseBody::parse(body).unwrap();
        let a = &resp.message_queue_assignments[0];
        assert_eq!(a.mode, MessageRequestMode::Pop);
        assert_eq!(a.message_queue, MessageQueue::new("T", "b", -1));
        assert_eq!(
            resp.to_json(),
            br#"{"messageQueueAssignments":[{"attachments":{},"messageQueue":{"brokerName":"b","queueId":-1,"topic":"T"},"mode":"POP"}]}"#.to_vec()
        );
        assert_eq!(
            QueryAssignmentResponseBody::parse(&resp.to_json()).unwrap(),
            resp
        );
        assert!(QueryAssignmentResponseBody::parse(
            br#"{"messageQueueAssignments":[{"mode":"PUSH"}]}"#
        )
        .is_err());
    }

    #[test]
    fn set_message_request_mode() {
        let b = SetMessageRequestModeRequestBody::parse(
            br#"{"consumerGroup":"cg","mode":1,"popShareQueueNum":0,"topic":"T"}"#,
        )
        .unwrap();
        assert_eq!(b.mode, MessageRequestMode::Pop);
        assert_eq!(
            b.to_json(),
            br#"{"consumerGroup":"cg","mode":"POP","popShareQueueNum":0,"topic":"T"}"#.to_vec()
        );
    }
}
