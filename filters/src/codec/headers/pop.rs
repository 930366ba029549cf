//! Pop-consumption headers: POP_MESSAGE (200050), ACK_MESSAGE (200051),
//! CHANGE_MESSAGE_INVISIBLETIME (200053) and NOTIFICATION (200054) (sections 4.3 to 4.5, 4.16).

command_header! {
    /// Request header of POP_MESSAGE (200050).
    pub struct PopMessageRequestHeader {
        /// Consumer group popping.
        required consumer_group: String = "consumerGroup",
        /// Topic popped from.
        required topic: String = "topic",
        /// Queue popped from; -1 pops from all read queues of the topic.
        required queue_id: i32 = "queueId",
        /// Maximum number of messages (the broker rejects more than 32).
        required max_msg_nums: i32 = "maxMsgNums",
        /// Invisible time of the popped messages, in ms.
        required invisible_time: i64 = "invisibleTime",
        /// Long-poll duration in ms; 0 means no polling.
        required poll_time: i64 = "pollTime",
        /// Client time of the request in ms ("0" lets the broker use its own clock).
        required born_time: i64 = "bornTime",
        /// Where to start when the group has no offset: 0 = min, 1 = max.
        required init_mode: i32 = "initMode",
        /// Expression type, `TAG` or `SQL92`.
        optional exp_type: String = "expType",
        /// Filter expression; empty means `*`.
        optional exp: String = "exp",
        /// Whether this is an orderly pop.
        optional order: bool = "order",
        /// Attempt id of an orderly-pop retry.
        optional attempt_id: String = "attemptId",
        /// Logical queue flag (inherited, 5.x).
        optional lo: bool = "lo",
        /// Namespace (inherited, 5.x).
        optional ns: String = "ns",
        /// Whether names are already namespaced (inherited, 5.x).
        optional nsd: bool = "nsd",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
        /// Oneway hint (inherited, 5.x).
        optional oway: bool = "oway",
    }
}

command_header! {
    /// Response header of POP_MESSAGE; the required fields go on every response code.
    pub struct PopMessageResponseHeader {
        /// Broker time of this pop, in ms.
        required pop_time: i64 = "popTime",
        /// Invisible time echoed from the request, in ms.
        required invisible_time: i64 = "invisibleTime",
        /// Revive queue of the checkpoint (999 for an orderly pop).
        required revive_qid: i32 = "reviveQid",
        /// Approximate number of messages left.
        required rest_num: i64 = "restNum",
        /// Start offsets per queue (section 6.2).
        optional start_offset_info: String = "startOffsetInfo",
        /// Message offsets per queue (section 6.2).
        optional msg_offset_info: String = "msgOffsetInfo",
        /// Consume counts of an orderly pop.
        optional order_count_info: String = "orderCountInfo",
    }
}

command_header! {
    /// Request header of ACK_MESSAGE (200051).
    pub struct AckMessageRequestHeader {
        /// Consumer group acking.
        required consumer_group: String = "consumerGroup",
        /// Real topic of the message (the retry topic for retried messages).
        required topic: String = "topic",
        /// Queue of the message (extraInfo field 6).
        required queue_id: i32 = "queueId",
        /// Queue offset of the message (extraInfo field 7).
        required offset: i64 = "offset",
        /// The message's `POP_CK` handle, verbatim.
        required extra_info: String = "extraInfo",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of CHANGE_MESSAGE_INVISIBLETIME (200053).
    pub struct ChangeInvisibleTimeRequestHeader {
        /// Consumer group of the message.
        required consumer_group: String = "consumerGroup",
        /// Real topic of the message, as in the ack.
        required topic: String = "topic",
        /// Queue of the message.
        required queue_id: i32 = "queueId",
        /// Queue offset of the message.
        required offset: i64 = "offset",
        /// The message's current `POP_CK` handle.
        required extra_info: String = "extraInfo",
        /// New invisible time, in ms from now.
        required invisible_time: i64 = "invisibleTime",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Response header of CHANGE_MESSAGE_INVISIBLETIME.
    pub struct ChangeInvisibleTimeResponseHeader {
        /// New pop time (the broker's now), in ms.
        required pop_time: i64 = "popTime",
        /// New invisible time, in ms.
        required invisible_time: i64 = "invisibleTime",
        /// Revive queue of the new checkpoint.
        required revive_qid: i32 = "reviveQid",
    }
}

command_header! {
    /// Request header of NOTIFICATION (200054): a long poll asking whether a queue has messages.
    pub struct NotificationRequestHeader {
        /// Consumer group asking.
        required consumer_group: String = "consumerGroup",
        /// Topic asked about.
        required topic: String = "topic",
        /// Queue asked about (-1 for all).
        required queue_id: i32 = "queueId",
        /// Long-poll duration in ms.
        required poll_time: i64 = "pollTime",
        /// Client time of the request, in ms.
        required born_time: i64 = "bornTime",
        /// Whether the consumer pops orderly.
        optional order: bool = "order",
        /// Attempt id of an orderly-pop retry.
        optional attempt_id: String = "attemptId",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Response header of NOTIFICATION.
    pub struct NotificationResponseHeader {
        /// Whether the queue has messages.
        required has_msg: bool = "hasMsg",
        /// Whether the polling table was full.
        optional polling_full: bool = "pollingFull",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    const HANDLE: &str = "0 1712345678901 60000 0 3 broker-a 1 1200";

    #[test]
    fn pop_request_round_trip_and_errors() {
        let full = PopMessageRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: -1,
            max_msg_nums: 32,
            invisible_time: 60_000,
            poll_time: 15_000,
            born_time: 1_712_345_678_901,
            init_mode: 1,
            exp_type: Some("TAG".into()),
            exp: Some("*".into()),
            order: Some(false),
            attempt_id: Some("attempt-1".into()),
            lo: Some(false),
            ns: Some("ns".into()),
            nsd: Some(false),
            bname: Some("broker-a".into()),
            oway: Some(false),
        };
        let minimal = PopMessageRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: -1,
            ..Default::default()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn pop_response_round_trip_and_errors() {
        let full = PopMessageResponseHeader {
            pop_time: 1_712_345_678_901,
            invisible_time: 60_000,
            revive_qid: 3,
            rest_num: 10,
            start_offset_info: Some("0 1200".into()),
            msg_offset_info: Some("0 1200,1201".into()),
            order_count_info: Some("0 1".into()),
        };
        let minimal = PopMessageResponseHeader {
            start_offset_info: None,
            msg_offset_info: None,
            order_count_info: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn ack_round_trip_and_errors() {
        let full = AckMessageRequestHeader {
            consumer_group: "cg".into(),
            topic: "%RETRY%cg_TopicA".into(),
            queue_id: 1,
            offset: 1200,
            extra_info: HANDLE.into(),
            bname: Some("broker-a".into()),
        };
        let minimal = AckMessageRequestHeader {
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn change_invisible_time_round_trip_and_errors() {
        let full = ChangeInvisibleTimeRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: 1,
            offset: 1200,
            extra_info: HANDLE.into(),
            invisible_time: 30_000,
            bname: Some("broker-a".into()),
        };
        let minimal = ChangeInvisibleTimeRequestHeader {
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let resp = ChangeInvisibleTimeResponseHeader {
            pop_time: 1_712_345_679_000,
            invisible_time: 30_000,
            revive_qid: 5,
        };
        check_header(&resp, &resp);
    }

    #[test]
    fn notification_round_trip_and_errors() {
        let full = NotificationRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: -1,
            poll_time: 15_000,
            born_time: 1_712_345_678_901,
            order: Some(true),
            attempt_id: Some("a-1".into()),
            bname: Some("broker-a".into()),
        };
        let minimal = NotificationRequestHeader {
            order: None,
            attempt_id: None,
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let full = NotificationResponseHeader {
            has_msg: true,
            polling_full: Some(false),
        };
        let minimal = NotificationResponseHeader {
            has_msg: false,
            polling_full: None,
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn ack_missing_extra_info_is_named() {
        let ext = ext(&[
            ("consumerGroup", "cg"),
            ("topic", "TopicA"),
            ("queueId", "1"),
            ("offset", "1200"),
        ]);
        assert_eq!(
            AckMessageRequestHeader::from_ext(&ext),
            Err(HeaderError::Missing { field: "extraInfo" })
        );
        let resp = ext_missing_revive();
        assert_eq!(
            PopMessageResponseHeader::from_ext(&resp),
            Err(HeaderError::Missing { field: "reviveQid" })
        );
    }

    fn ext_missing_revive() -> crate::codec::ext::ExtFields {
        ext(&[
            ("popTime", "1712345678901"),
            ("invisibleTime", "60000"),
            ("restNum", "0"),
        ])
    }
}
