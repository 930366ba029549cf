//! Transaction headers: END_TRANSACTION (37) and CHECK_TRANSACTION_STATE (39) (section 4.13).

command_header! {
    /// Request header of END_TRANSACTION (37), producer to broker, oneway.
    pub struct EndTransactionRequestHeader {
        /// Producer group of the transaction.
        required producer_group: String = "producerGroup",
        /// Queue offset of the half message.
        required tran_state_table_offset: i64 = "tranStateTableOffset",
        /// Commit-log offset of the half message.
        required commit_log_offset: i64 = "commitLogOffset",
        /// Outcome: 0 not decided, 8 commit, 12 rollback (see the associated constants).
        required commit_or_rollback: i32 = "commitOrRollback",
        /// Whether this answers a CHECK_TRANSACTION_STATE.
        optional from_transaction_check: bool = "fromTransactionCheck",
        /// Offset message id of the half message.
        required msg_id: String = "msgId",
        /// Transaction id (the message's uniq key).
        optional transaction_id: String = "transactionId",
        /// Logical broker name (inherited; Java 4.9.5+).
        optional bname: String = "bname",
    }
}

impl EndTransactionRequestHeader {
    /// `commitOrRollback`: the producer has not decided yet.
    pub const TRANSACTION_NOT_TYPE: i32 = 0;
    /// `commitOrRollback`: commit the half message.
    pub const TRANSACTION_COMMIT_TYPE: i32 = 0x8;
    /// `commitOrRollback`: roll the half message back.
    pub const TRANSACTION_ROLLBACK_TYPE: i32 = 0xC;
}

command_header! {
    /// Request header of CHECK_TRANSACTION_STATE (39), broker to producer, oneway.
    pub struct CheckTransactionStateRequestHeader {
        /// Queue offset of the half message.
        required tran_state_table_offset: i64 = "tranStateTableOffset",
        /// Commit-log offset of the half message.
        required commit_log_offset: i64 = "commitLogOffset",
        /// Message id (uniq key) of the half message.
        optional msg_id: String = "msgId",
        /// Transaction id.
        optional transaction_id: String = "transactionId",
        /// Offset message id of the half message.
        optional offset_msg_id: String = "offsetMsgId",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    #[test]
    fn end_transaction_round_trip_and_errors() {
        let full = EndTransactionRequestHeader {
            producer_group: "PG".into(),
            tran_state_table_offset: 12,
            commit_log_offset: 123_456,
            commit_or_rollback: EndTransactionRequestHeader::TRANSACTION_COMMIT_TYPE,
            from_transaction_check: Some(true),
            msg_id: "7F00000200002A9F000000000001E240".into(),
            transaction_id: Some("0100007F0000C46200001FE7686E0100".into()),
            bname: Some("broker-a".into()),
        };
        let minimal = EndTransactionRequestHeader {
            from_transaction_check: None,
            transaction_id: None,
            bname: None,
            ..full.clone()
        };
        check_header(&full, &minimal);
        assert_eq!(full.to_ext().get("commitOrRollback"), Some("8"));

        let no_msg_id = ext(&[
            ("producerGroup", "PG"),
            ("tranStateTableOffset", "1"),
            ("commitLogOffset", "2"),
            ("commitOrRollback", "12"),
        ]);
        assert_eq!(
            EndTransactionRequestHeader::from_ext(&no_msg_id),
            Err(HeaderError::Missing { field: "msgId" })
        );
    }

    #[test]
    fn check_transaction_state_round_trip_and_errors() {
        let full = CheckTransactionStateRequestHeader {
            tran_state_table_offset: 12,
            commit_log_offset: 123_456,
            msg_id: Some("0100007F0000C46200001FE7686E0100".into()),
            transaction_id: Some("0100007F0000C46200001FE7686E0100".into()),
            offset_msg_id: Some("7F00000200002A9F000000000001E240".into()),
        };
        let minimal = CheckTransactionStateRequestHeader {
            tran_state_table_offset: 12,
            commit_log_offset: 123_456,
            ..Default::default()
        };
        check_header(&full, &minimal);
    }
}
