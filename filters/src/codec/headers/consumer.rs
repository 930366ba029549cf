//! Consumer management headers: CONSUMER_SEND_MSG_BACK (36), GET_CONSUMER_LIST_BY_GROUP (38),
//! UNREGISTER_CLIENT (35) and NOTIFY_CONSUMER_IDS_CHANGED (40) (sections 4.8, 4.9, 4.11).

command_header! {
    /// Request header of CONSUMER_SEND_MSG_BACK (36): send a failed message to retry or DLQ.
    pub struct ConsumerSendMsgBackRequestHeader {
        /// Physical commit-log offset of the message (not its queue offset).
        required offset: i64 = "offset",
        /// Consumer group that failed to consume.
        required group: String = "group",
        /// Delay level: 0 lets the broker decide, -1 sends straight to the DLQ.
        required delay_level: i32 = "delayLevel",
        /// Message id the client knows (uniq id, else offset id).
        optional origin_msg_id: String = "originMsgId",
        /// Original topic of the message.
        optional origin_topic: String = "originTopic",
        /// Whether the consumer runs in unit mode.
        optional unit_mode: bool = "unitMode",
        /// Re-consume count after which the message goes to the DLQ (16 by default).
        optional max_reconsume_times: i32 = "maxReconsumeTimes",
        /// Logical broker name (inherited; Java 4.9.5+).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of GET_CONSUMER_LIST_BY_GROUP (38).
    pub struct GetConsumerListByGroupRequestHeader {
        /// Consumer group whose client ids are asked for.
        required consumer_group: String = "consumerGroup",
    }
}

command_header! {
    /// Request header of UNREGISTER_CLIENT (35); names one producer or consumer group.
    pub struct UnregisterClientRequestHeader {
        /// Client id (`ip@instance[@unit]`).
        required client_id: String = "clientID",
        /// Producer group to leave, if any.
        optional producer_group: String = "producerGroup",
        /// Consumer group to leave, if any.
        optional consumer_group: String = "consumerGroup",
    }
}

command_header! {
    /// Request header of NOTIFY_CONSUMER_IDS_CHANGED (40), broker to client.
    pub struct NotifyConsumerIdsChangedRequestHeader {
        /// Consumer group whose membership changed.
        required consumer_group: String = "consumerGroup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    #[test]
    fn send_back_round_trip_and_errors() {
        let full = ConsumerSendMsgBackRequestHeader {
            offset: 123_456_789,
            group: "cg".into(),
            delay_level: 0,
            origin_msg_id: Some("7F0000011A2C18B4AAC2527E1D9E0000".into()),
            origin_topic: Some("TopicA".into()),
            unit_mode: Some(false),
            max_reconsume_times: Some(16),
            bname: Some("broker-a".into()),
        };
        let minimal = ConsumerSendMsgBackRequestHeader {
            offset: 123_456_789,
            group: "cg".into(),
            delay_level: -1,
            ..Default::default()
        };
        check_header(&full, &minimal);

        let mut no_group = full.to_ext();
        no_group.remove("group");
        assert_eq!(
            ConsumerSendMsgBackRequestHeader::from_ext(&no_group),
            Err(HeaderError::Missing { field: "group" })
        );
    }

    #[test]
    fn small_headers_round_trip_and_errors() {
        let h = GetConsumerListByGroupRequestHeader {
            consumer_group: "cg".into(),
        };
        check_header(&h, &h);
        let h = NotifyConsumerIdsChangedRequestHeader {
            consumer_group: "cg".into(),
        };
        check_header(&h, &h);
        let full = UnregisterClientRequestHeader {
            client_id: "10.0.0.5@12345#81234567890123".into(),
            producer_group: Some("PG".into()),
            consumer_group: Some("cg".into()),
        };
        let minimal = UnregisterClientRequestHeader {
            client_id: full.client_id.clone(),
            producer_group: None,
            consumer_group: None,
        };
        check_header(&full, &minimal);
        assert_eq!(
            UnregisterClientRequestHeader::from_ext(&ext(&[("consumerGroup", "cg")])),
            Err(HeaderError::Missing { field: "clientID" })
        );
    }

    /// `cpp_get_consumer_list_by_group.req.json`.
    #[test]
    fn cpp_get_consumer_list_by_group() {
        let ext = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "GipTxlpjBK1HAAIPrNi/OWjrGJg="),
            ("consumerGroup", "CG_CPP_PUSH"),
        ]);
        let h = GetConsumerListByGroupRequestHeader::from_ext(&ext).unwrap();
        assert_eq!(h.consumer_group, "CG_CPP_PUSH");
        assert_eq!(
            h.to_ext(),
            crate::codec::headers::testutil::ext(&[("consumerGroup", "CG_CPP_PUSH")])
        );
    }

    /// `cpp_unregister_client.req.json`: an empty consumer group is kept as `Some("")`.
    #[test]
    fn cpp_unregister_client() {
        let ext = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "h7CTMB9VMYVaiAnxTadqUXgSV8o="),
            ("clientID", "12380-127.0.0.1@DEFAULT"),
            ("consumerGroup", ""),
            ("producerGroup", "PG_CPP_TEST"),
        ]);
        let h = UnregisterClientRequestHeader::from_ext(&ext).unwrap();
        assert_eq!(
            h,
            UnregisterClientRequestHeader {
                client_id: "12380-127.0.0.1@DEFAULT".into(),
                producer_group: Some("PG_CPP_TEST".into()),
                consumer_group: Some(String::new()),
            }
        );
        assert_eq!(
            UnregisterClientRequestHeader::from_ext(&h.to_ext()).unwrap(),
            h
        );
    }
}
