//! Consumer-group bodies: GET_CONSUMER_LIST_BY_GROUP (38, protocol notes 4.9) and
//! LOCK_BATCH_MQ / UNLOCK_BATCH_MQ (41 / 42, notes 4.12), with `MessageQueue`.

use serde::{Deserialize, Serialize};

use super::json_body;
use super::serde_util::null_default;

/// The GET_CONSUMER_LIST_BY_GROUP response body (`GetConsumerListByGroupResponseBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerListBody {
    /// Client ids of the group's consumers.
    #[serde(default, deserialize_with = "null_default")]
    pub consumer_id_list: Vec<String>,
}

json_body!(ConsumerListBody, "ConsumerListBody");

/// A queue of a topic on a broker (`MessageQueue`).
///
/// Ordered by broker name, queue id, then topic (the field order), so it can key sorted sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueue {
    /// The broker holding the queue.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_name: String,
    /// The queue id (`-1` in pop assignments means "all queues").
    #[serde(default, deserialize_with = "null_default")]
    pub queue_id: i32,
    /// The topic.
    #[serde(default, deserialize_with = "null_default")]
    pub topic: String,
}

impl MessageQueue {
    /// A queue.
    pub fn new(topic: impl Into<String>, broker_name: impl Into<String>, queue_id: i32) -> Self {
        Self {
            broker_name: broker_name.into(),
            queue_id,
            topic: topic.into(),
        }
    }
}

/// The LOCK_BATCH_MQ request body (`LockBatchRequestBody`); UNLOCK_BATCH_MQ uses the same shape
/// ([`UnlockBatchRequestBody`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockBatchRequestBody {
    /// The requesting client id.
    #[serde(default, deserialize_with = "null_default")]
    pub client_id: String,
    /// The consumer group.
    #[serde(default, deserialize_with = "null_default")]
    pub consumer_group: String,
    /// The queues to lock (a Java `Set`; order kept as received).
    #[serde(default, deserialize_with = "null_default")]
    pub mq_set: Vec<MessageQueue>,
    /// 5.x: lock only on the receiving broker (no forwarding in a proxy).
    #[serde(default, deserialize_with = "null_default")]
    pub only_this_broker: bool,
}

json_body!(LockBatchRequestBody, "LockBatchRequestBody");

/// The UNLOCK_BATCH_MQ request body (`UnlockBatchRequestBody`): same fields as the lock request.
pub type UnlockBatchRequestBody = LockBatchRequestBody;

/// The LOCK_BATCH_MQ response body (`LockBatchResponseBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockBatchResponseBody {
    /// The queues now locked by the requester.
    #[serde(rename = "lockOKMQSet", default, deserialize_with = "null_default")]
    pub lock_ok_mq_set: Vec<MessageQueue>,
}

json_body!(LockBatchResponseBody, "LockBatchResponseBody");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_list() {
        // cpp_get_consumer_list_by_group.resp.json (rocketmq-rust).
        let body =
            ConsumerListBody::parse(b"{\"consumerIdList\":[\"12380-127.0.0.1@DEFAULT\"]}").unwrap();
        assert_eq!(body.consumer_id_list, ["12380-127.0.0.1@DEFAULT"]);
        assert_eq!(
            body.to_json(),
            b"{\"consumerIdList\":[\"12380-127.0.0.1@DEFAULT\"]}".to_vec()
        );
        assert!(ConsumerListBody::parse(b"{\"consumerIdList\":null}")
            .unwrap()
            .consumer_id_list
            .is_empty());
        assert!(ConsumerListBody::parse(b"{\"consumerIdList\":[1]}").is_err());
    }

    #[test]
    fn lock_bodies() {
        let req = LockBatchRequestBody::parse(
            br#"{"consumerGroup":"cg","clientId":"c1","mqSet":[{"brokerName":"b","queueId":0,"topic":"T"},{"topic":"T","brokerName":"b","queueId":3}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(req.consumer_group, "cg");
        assert_eq!(req.client_id, "c1");
        assert!(!req.only_this_broker);
        assert_eq!(req.mq_set[1], MessageQueue::new("T", "b", 3));
        assert_eq!(
            req.to_json(),
            br#"{"clientId":"c1","consumerGroup":"cg","mqSet":[{"brokerName":"b","queueId":0,"topic":"T"},{"brokerName":"b","queueId":3,"topic":"T"}],"onlyThisBroker":false}"#.to_vec()
        );
        let resp = LockBatchResponseBody {
            lock_ok_mq_set: vec![MessageQueue::new("T", "b", 0)],
        };
        let json = resp.to_json();
        assert_eq!(
            json,
            br#"{"lockOKMQSet":[{"brokerName":"b","queueId":0,"topic":"T"}]}"#.to_vec()
        );
        assert_eq!(LockBatchResponseBody::parse(&json).unwrap(), resp);
    }
}
