//! Admin / tool request headers (`testdata/reference/tool-requests.md`): VIEW_MESSAGE_BY_ID (33),
//! QUERY_MESSAGE (12), GET_TOPIC_STATS_INFO (202), GET_CONSUMER_CONNECTION_LIST (203),
//! GET_CONSUME_STATS (208), GET_CONSUMER_RUNNING_INFO (307), CONSUME_MESSAGE_DIRECTLY (309).

/// The extra ext field the Java client adds to QUERY_MESSAGE: `"true"` for a unique-key query.
pub const UNIQUE_KEY_QUERY: &str = "_UNIQUE_KEY_QUERY";

command_header! {
    /// Request header of VIEW_MESSAGE_BY_ID (33).
    pub struct ViewMessageRequestHeader {
        /// Commit log offset decoded from the offset message id.
        required offset: i64 = "offset",
        /// 5.x clients name the topic (for ACL).
        optional topic: String = "topic",
    }
}

command_header! {
    /// Request header of QUERY_MESSAGE (12).
    pub struct QueryMessageRequestHeader {
        /// The topic.
        required topic: String = "topic",
        /// A key of the message's KEYS, or its unique key.
        required key: String = "key",
        /// Most messages wanted.
        required max_num: i32 = "maxNum",
        /// Store time range start, ms.
        required begin_timestamp: i64 = "beginTimestamp",
        /// Store time range end, ms.
        required end_timestamp: i64 = "endTimestamp",
    }
}

command_header! {
    /// Response header of QUERY_MESSAGE (12): set on success and on QUERY_NOT_FOUND.
    pub struct QueryMessageResponseHeader {
        /// When the index was last written, ms.
        required index_last_update_timestamp: i64 = "indexLastUpdateTimestamp",
        /// Commit log offset of the last indexed message.
        required index_last_update_phyoffset: i64 = "indexLastUpdatePhyoffset",
    }
}

command_header! {
    /// Request header of GET_TOPIC_STATS_INFO (202).
    pub struct GetTopicStatsInfoRequestHeader {
        /// The topic.
        required topic: String = "topic",
    }
}

command_header! {
    /// Request header of GET_CONSUMER_CONNECTION_LIST (203).
    pub struct GetConsumerConnectionListRequestHeader {
        /// The group.
        required consumer_group: String = "consumerGroup",
    }
}

command_header! {
    /// Request header of GET_CONSUME_STATS (208).
    pub struct GetConsumeStatsRequestHeader {
        /// The group.
        required consumer_group: String = "consumerGroup",
        /// One topic; absent or blank means every topic the group has offsets for.
        optional topic: String = "topic",
    }
}

command_header! {
    /// Request header of QUERY_TOPIC_CONSUME_BY_WHO (300).
    pub struct QueryTopicConsumeByWhoRequestHeader {
        /// The topic.
        required topic: String = "topic",
    }
}

command_header! {
    /// Request header of GET_CONSUMER_RUNNING_INFO (307), tool -> broker and broker -> client.
    pub struct GetConsumerRunningInfoRequestHeader {
        /// The group.
        required consumer_group: String = "consumerGroup",
        /// The client asked about.
        required client_id: String = "clientId",
        /// Whether a thread dump is wanted.
        optional jstack_enable: bool = "jstackEnable",
    }
}

command_header! {
    /// Request header of CONSUME_MESSAGE_DIRECTLY (309), tool -> broker and broker -> client.
    pub struct ConsumeMessageDirectlyResultRequestHeader {
        /// The group.
        required consumer_group: String = "consumerGroup",
        /// The client to consume the message.
        optional client_id: String = "clientId",
        /// The offset message id.
        optional msg_id: String = "msgId",
        /// Set by the broker: its name (the client builds the message's queue from it).
        optional broker_name: String = "brokerName",
    }
}
