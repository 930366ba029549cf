//! Offset headers: QUERY_CONSUMER_OFFSET (14), UPDATE_CONSUMER_OFFSET (15), GET_MAX_OFFSET (30),
//! GET_MIN_OFFSET (31) and SEARCH_OFFSET_BY_TIMESTAMP (29) (sections 4.6 and 4.7).

command_header! {
    /// Request header of QUERY_CONSUMER_OFFSET (14).
    pub struct QueryConsumerOffsetRequestHeader {
        /// Consumer group whose offset is asked for.
        required consumer_group: String = "consumerGroup",
        /// Topic of the queue.
        required topic: String = "topic",
        /// Queue id.
        required queue_id: i32 = "queueId",
        /// Whether to answer 0 rather than QUERY_NOT_FOUND when nothing is stored (5.x).
        optional set_zero_if_not_found: bool = "setZeroIfNotFound",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Response header of QUERY_CONSUMER_OFFSET.
    pub struct QueryConsumerOffsetResponseHeader {
        /// Committed offset: the next offset to consume.
        required offset: i64 = "offset",
    }
}

command_header! {
    /// Request header of UPDATE_CONSUMER_OFFSET (15), usually sent oneway.
    pub struct UpdateConsumerOffsetRequestHeader {
        /// Consumer group whose offset is stored.
        required consumer_group: String = "consumerGroup",
        /// Topic of the queue.
        required topic: String = "topic",
        /// Queue id.
        required queue_id: i32 = "queueId",
        /// Offset to store: the next offset to consume.
        required commit_offset: i64 = "commitOffset",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of GET_MAX_OFFSET (30).
    pub struct GetMaxOffsetRequestHeader {
        /// Topic of the queue.
        required topic: String = "topic",
        /// Queue id.
        required queue_id: i32 = "queueId",
        /// Whether to count only committed (dispatched) messages; default true (5.x).
        optional committed: bool = "committed",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of GET_MIN_OFFSET (31).
    pub struct GetMinOffsetRequestHeader {
        /// Topic of the queue.
        required topic: String = "topic",
        /// Queue id.
        required queue_id: i32 = "queueId",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Request header of SEARCH_OFFSET_BY_TIMESTAMP (29).
    pub struct SearchOffsetRequestHeader {
        /// Topic of the queue.
        required topic: String = "topic",
        /// Queue id.
        required queue_id: i32 = "queueId",
        /// Store timestamp to search for, in ms.
        required timestamp: i64 = "timestamp",
        /// Which match to return when several messages share the time, `LOWER` or `UPPER` (5.x).
        optional boundary_type: String = "boundaryType",
        /// Logical broker name (inherited).
        optional bname: String = "bname",
    }
}

command_header! {
    /// Response header of GET_MAX_OFFSET, GET_MIN_OFFSET and SEARCH_OFFSET_BY_TIMESTAMP.
    pub struct OffsetResponseHeader {
        /// The offset found.
        required offset: i64 = "offset",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    #[test]
    fn query_round_trip_and_errors() {
        let full = QueryConsumerOffsetRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: 3,
            set_zero_if_not_found: Some(false),
            bname: Some("broker-a".into()),
        };
        let minimal = QueryConsumerOffsetRequestHeader {
            set_zero_if_not_found: None,
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
        let resp = QueryConsumerOffsetResponseHeader { offset: 1200 };
        check_header(&resp, &resp);
    }

    #[test]
    fn update_round_trip_and_errors() {
        let full = UpdateConsumerOffsetRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: 3,
            commit_offset: 1201,
            bname: Some("broker-a".into()),
        };
        let minimal = UpdateConsumerOffsetRequestHeader {
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn min_max_search_round_trip_and_errors() {
        let full = GetMaxOffsetRequestHeader {
            topic: "TopicA".into(),
            queue_id: 0,
            committed: Some(true),
            bname: Some("broker-a".into()),
        };
        let minimal = GetMaxOffsetRequestHeader {
            committed: None,
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let full = GetMinOffsetRequestHeader {
            topic: "TopicA".into(),
            queue_id: 0,
            bname: Some("broker-a".into()),
        };
        let minimal = GetMinOffsetRequestHeader {
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let full = SearchOffsetRequestHeader {
            topic: "TopicA".into(),
            queue_id: 0,
            timestamp: 1_712_345_678_901,
            boundary_type: Some("LOWER".into()),
            bname: Some("broker-a".into()),
        };
        let minimal = SearchOffsetRequestHeader {
            boundary_type: None,
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);

        let resp = OffsetResponseHeader { offset: -1 };
        check_header(&resp, &resp);
    }

    #[test]
    fn missing_fields_are_named() {
        let no_queue = ext(&[("topic", "TopicA")]);
        for err in [
            GetMaxOffsetRequestHeader::from_ext(&no_queue).unwrap_err(),
            GetMinOffsetRequestHeader::from_ext(&no_queue).unwrap_err(),
            SearchOffsetRequestHeader::from_ext(&no_queue).unwrap_err(),
        ] {
            assert_eq!(err, HeaderError::Missing { field: "queueId" });
        }
        let no_ts = ext(&[("topic", "TopicA"), ("queueId", "1")]);
        assert_eq!(
            SearchOffsetRequestHeader::from_ext(&no_ts),
            Err(HeaderError::Missing { field: "timestamp" })
        );
        assert_eq!(
            OffsetResponseHeader::from_ext(&ext(&[])),
            Err(HeaderError::Missing { field: "offset" })
        );
    }

    /// `cpp_query_consumer_offset.req.json` and its response.
    #[test]
    fn cpp_query_consumer_offset() {
        let ext_req = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "HTrqjFC1ttb2BgCpgEaxYj/1TI8="),
            ("consumerGroup", "CG_CPP_PUSH"),
            ("queueId", "0"),
            ("topic", "TopicCpp"),
        ]);
        let h = QueryConsumerOffsetRequestHeader::from_ext(&ext_req).unwrap();
        assert_eq!(
            h,
            QueryConsumerOffsetRequestHeader {
                consumer_group: "CG_CPP_PUSH".into(),
                topic: "TopicCpp".into(),
                queue_id: 0,
                set_zero_if_not_found: None,
                bname: None,
            }
        );
        let resp = QueryConsumerOffsetResponseHeader::from_ext(&ext(&[("offset", "0")])).unwrap();
        assert_eq!(resp.offset, 0);
        assert_eq!(resp.to_ext(), ext(&[("offset", "0")]));
    }

    /// `cpp_update_consumer_offset_after_consume.req.json`.
    #[test]
    fn cpp_update_consumer_offset_after_consume() {
        let ext_req = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "IJqoMSQo5E6cuZocNA+cm+6y7A8="),
            ("commitOffset", "2"),
            ("consumerGroup", "CG_CPP_PUSH"),
            ("queueId", "0"),
            ("topic", "TopicCpp"),
        ]);
        let h = UpdateConsumerOffsetRequestHeader::from_ext(&ext_req).unwrap();
        assert_eq!(
            h,
            UpdateConsumerOffsetRequestHeader {
                consumer_group: "CG_CPP_PUSH".into(),
                topic: "TopicCpp".into(),
                queue_id: 0,
                commit_offset: 2,
                bname: None,
            }
        );
        let mut no_commit = ext_req.clone();
        no_commit.remove("commitOffset");
        assert_eq!(
            UpdateConsumerOffsetRequestHeader::from_ext(&no_commit),
            Err(HeaderError::Missing {
                field: "commitOffset"
            })
        );
    }
}
