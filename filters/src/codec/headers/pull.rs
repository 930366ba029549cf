//! PULL_MESSAGE (11) headers and the pull `sysFlag` bits (section 4.2).

use std::fmt;

command_header! {
    /// Request header of PULL_MESSAGE (11).
    pub struct PullMessageRequestHeader {
        /// Consumer group pulling.
        required consumer_group: String = "consumerGroup",
        /// Topic pulled from.
        required topic: String = "topic",
        /// Queue pulled from.
        required queue_id: i32 = "queueId",
        /// Next logical queue offset wanted.
        required queue_offset: i64 = "queueOffset",
        /// Maximum number of messages to return (default 32).
        required max_msg_nums: i32 = "maxMsgNums",
        /// [`PullSysFlag`] bits; see [`PullMessageRequestHeader::pull_sys_flag`].
        required sys_flag: i32 = "sysFlag",
        /// Consumer's committed offset, meaningful only with the commit-offset flag.
        required commit_offset: i64 = "commitOffset",
        /// Long-poll hold time in ms (15000 for push consumers).
        required suspend_timeout_millis: i64 = "suspendTimeoutMillis",
        /// Subscription expression, sent with the subscription flag.
        optional subscription: String = "subscription",
        /// Subscription version (a timestamp).
        required sub_version: i64 = "subVersion",
        /// Expression type, `TAG` or `SQL92` (the C++ client omits it).
        optional expression_type: String = "expressionType",
        /// Maximum total bytes to return (5.x).
        optional max_msg_bytes: i32 = "maxMsgBytes",
        /// Proxy marker for the request's origin (5.x).
        optional request_source: i32 = "requestSource",
        /// Client id forwarded by a proxy (5.x; the upstream spelling).
        optional proxy_froward_client_id: String = "proxyFrowardClientId",
        /// Logical queue flag (inherited `TopicRequestHeader` field, 5.x).
        optional lo: bool = "lo",
        /// Namespace (inherited, 5.x).
        optional ns: String = "ns",
        /// Whether names are already namespaced (inherited, 5.x).
        optional nsd: bool = "nsd",
        /// Logical broker name (inherited; Java 4.9.5+ and 5.x).
        optional bname: String = "bname",
        /// Oneway hint (inherited, 5.x).
        optional oway: bool = "oway",
    }
}

impl PullMessageRequestHeader {
    /// The `sysFlag` field as [`PullSysFlag`].
    pub fn pull_sys_flag(&self) -> PullSysFlag {
        PullSysFlag::from_bits(self.sys_flag)
    }

    /// Replaces the `sysFlag` field.
    pub fn set_pull_sys_flag(&mut self, flag: PullSysFlag) {
        self.sys_flag = flag.bits();
    }
}

/// The `sysFlag` bits of a pull request (`PullSysFlag` in Java).
///
/// Unknown bits are kept as they are, so a flag read from the wire is written back unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PullSysFlag(i32);

impl PullSysFlag {
    /// Bit 0: the broker may store `commitOffset`.
    pub const COMMIT_OFFSET: i32 = 0x1;
    /// Bit 1: the request may be held (long polling).
    pub const SUSPEND: i32 = 0x2;
    /// Bit 2: `subscription` is present and is used instead of the registered one.
    pub const SUBSCRIPTION: i32 = 0x4;
    /// Bit 3: class-filter (filter-server) mode, obsolete.
    pub const CLASS_FILTER: i32 = 0x8;
    /// Bit 4: the request comes from a lite pull consumer.
    pub const LITE_PULL: i32 = 0x10;

    /// No bits set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The flag with exactly these bits (unknown bits included).
    pub const fn from_bits(bits: i32) -> Self {
        Self(bits)
    }

    /// The raw bits, as sent in `sysFlag`.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// The flag a push consumer builds: commit offset, suspend, subscription, class filter.
    pub const fn new(
        commit_offset: bool,
        suspend: bool,
        subscription: bool,
        class_filter: bool,
    ) -> Self {
        Self::empty()
            .with_commit_offset(commit_offset)
            .with_suspend(suspend)
            .with_subscription(subscription)
            .with_class_filter(class_filter)
    }

    const fn with(self, bit: i32, on: bool) -> Self {
        if on {
            Self(self.0 | bit)
        } else {
            Self(self.0 & !bit)
        }
    }

    const fn has(self, bit: i32) -> bool {
        self.0 & bit != 0
    }

    /// Sets or clears the commit-offset bit.
    pub const fn with_commit_offset(self, on: bool) -> Self {
        self.with(Self::COMMIT_OFFSET, on)
    }

    /// Sets or clears the suspend bit.
    pub const fn with_suspend(self, on: bool) -> Self {
        self.with(Self::SUSPEND, on)
    }

    /// Sets or clears the subscription bit.
    pub const fn with_subscription(self, on: bool) -> Self {
        self.with(Self::SUBSCRIPTION, on)
    }

    /// Sets or clears the class-filter bit.
    pub const fn with_class_filter(self, on: bool) -> Self {
        self.with(Self::CLASS_FILTER, on)
    }

    /// Sets or clears the lite-pull bit.
    pub const fn with_lite_pull(self, on: bool) -> Self {
        self.with(Self::LITE_PULL, on)
    }

    /// Whether the broker may store `commitOffset`.
    pub const fn has_commit_offset(self) -> bool {
        self.has(Self::COMMIT_OFFSET)
    }

    /// Whether long polling is allowed.
    pub const fn has_suspend(self) -> bool {
        self.has(Self::SUSPEND)
    }

    /// Whether the request carries its own subscription.
    pub const fn has_subscription(self) -> bool {
        self.has(Self::SUBSCRIPTION)
    }

    /// Whether class-filter mode is on.
    pub const fn has_class_filter(self) -> bool {
        self.has(Self::CLASS_FILTER)
    }

    /// Whether the request comes from a lite pull consumer.
    pub const fn has_lite_pull(self) -> bool {
        self.has(Self::LITE_PULL)
    }
}

impl fmt::Debug for PullSysFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PullSysFlag({:#x}", self.0)?;
        for (bit, name) in [
            (Self::COMMIT_OFFSET, "COMMIT_OFFSET"),
            (Self::SUSPEND, "SUSPEND"),
            (Self::SUBSCRIPTION, "SUBSCRIPTION"),
            (Self::CLASS_FILTER, "CLASS_FILTER"),
            (Self::LITE_PULL, "LITE_PULL"),
        ] {
            if self.has(bit) {
                write!(f, " {name}")?;
            }
        }
        f.write_str(")")
    }
}

impl From<i32> for PullSysFlag {
    fn from(bits: i32) -> Self {
        Self(bits)
    }
}

impl From<PullSysFlag> for i32 {
    fn from(flag: PullSysFlag) -> Self {
        flag.0
    }
}

command_header! {
    /// Response header of PULL_MESSAGE; all four required fields go on every response code.
    pub struct PullMessageResponseHeader {
        /// Broker id the client should pull from next (0 keeps it on the master).
        required suggest_which_broker_id: i64 = "suggestWhichBrokerId",
        /// Offset to pull from next.
        required next_begin_offset: i64 = "nextBeginOffset",
        /// Smallest offset in the queue.
        required min_offset: i64 = "minOffset",
        /// Largest offset in the queue (next to be written).
        required max_offset: i64 = "maxOffset",
        /// Offset delta of a static-topic logical queue (5.x).
        optional offset_delta: i64 = "offsetDelta",
        /// Topic sys flag (5.x).
        optional topic_sys_flag: i32 = "topicSysFlag",
        /// Group sys flag (5.x).
        optional group_sys_flag: i32 = "groupSysFlag",
        /// Reason the pull was forbidden (5.x).
        optional forbidden_type: i32 = "forbiddenType",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ext::{CommandHeader, HeaderError};
    use crate::codec::headers::testutil::{check_header, ext};

    fn full_request() -> PullMessageRequestHeader {
        PullMessageRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            queue_id: 1,
            queue_offset: 100,
            max_msg_nums: 32,
            sys_flag: 7,
            commit_offset: 90,
            suspend_timeout_millis: 15_000,
            subscription: Some("TagA || TagB".into()),
            sub_version: 1_712_345_678_901,
            expression_type: Some("TAG".into()),
            max_msg_bytes: Some(1 << 20),
            request_source: Some(1),
            proxy_froward_client_id: Some("10.0.0.5@1#2".into()),
            lo: Some(false),
            ns: Some("ns1".into()),
            nsd: Some(true),
            bname: Some("broker-a".into()),
            oway: Some(false),
        }
    }

    #[test]
    fn request_round_trip_and_errors() {
        let full = full_request();
        let minimal = PullMessageRequestHeader {
            consumer_group: "cg".into(),
            topic: "TopicA".into(),
            sys_flag: 2,
            suspend_timeout_millis: 15_000,
            ..Default::default()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn response_round_trip_and_errors() {
        let full = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset: 12,
            min_offset: 0,
            max_offset: 20,
            offset_delta: Some(-3),
            topic_sys_flag: Some(0),
            group_sys_flag: Some(1),
            forbidden_type: Some(2),
        };
        let minimal = PullMessageResponseHeader {
            next_begin_offset: 12,
            max_offset: 20,
            ..Default::default()
        };
        check_header(&full, &minimal);
    }

    #[test]
    fn sys_flag_builder_and_queries() {
        let f = PullSysFlag::new(true, true, false, false);
        assert_eq!(f.bits(), 0x3);
        assert!(f.has_commit_offset() && f.has_suspend());
        assert!(!f.has_subscription() && !f.has_class_filter() && !f.has_lite_pull());
        let f = f.with_commit_offset(false).with_lite_pull(true);
        assert_eq!(f.bits(), 0x12);
        assert!(f.has_lite_pull() && !f.has_commit_offset());
        assert_eq!(PullSysFlag::new(true, true, true, true).bits(), 0xF);
        assert_eq!(PullSysFlag::empty().with_subscription(true).bits(), 0x4);
        assert_eq!(PullSysFlag::empty().with_class_filter(true).bits(), 0x8);
        // Unknown bits survive.
        let odd = PullSysFlag::from_bits(0x102).with_suspend(false);
        assert_eq!(i32::from(odd), 0x100);
        assert_eq!(PullSysFlag::from(6), PullSysFlag::from_bits(6));
        assert_eq!(
            format!("{:?}", PullSysFlag::from_bits(6)),
            "PullSysFlag(0x6 SUSPEND SUBSCRIPTION)"
        );

        let mut h = full_request();
        h.set_pull_sys_flag(h.pull_sys_flag().with_commit_offset(false));
        assert_eq!(h.sys_flag, 6);
    }

    /// `cpp_pull_message_found.req.json`.
    #[test]
    fn cpp_pull_message_found() {
        let ext = ext(&[
            ("AccessKey", ""),
            ("OnsChannel", "ALIYUN"),
            ("Signature", "8jWIfcl+iu5MB6RJ0+3Maji8AY8="),
            ("commitOffset", "0"),
            ("consumerGroup", "CG_CPP_PUSH"),
            ("maxMsgNums", "32"),
            ("queueId", "0"),
            ("queueOffset", "0"),
            ("subVersion", "1795253560643"),
            ("subscription", "*"),
            ("suspendTimeoutMillis", "15000"),
            ("sysFlag", "6"),
            ("topic", "TopicCpp"),
        ]);
        let h = PullMessageRequestHeader::from_ext(&ext).unwrap();
        assert_eq!(h.consumer_group, "CG_CPP_PUSH");
        assert_eq!(h.topic, "TopicCpp");
        assert_eq!(h.queue_id, 0);
        assert_eq!(h.queue_offset, 0);
        assert_eq!(h.max_msg_nums, 32);
        assert_eq!(h.sys_flag, 6);
        let flag = h.pull_sys_flag();
        assert!(flag.has_suspend());
        assert!(flag.has_subscription());
        assert!(!flag.has_commit_offset());
        assert!(!flag.has_class_filter());
        assert!(!flag.has_lite_pull());
        assert_eq!(h.commit_offset, 0);
        assert_eq!(h.suspend_timeout_millis, 15_000);
        assert_eq!(h.subscription.as_deref(), Some("*"));
        assert_eq!(h.sub_version, 1_795_253_560_643);
        assert_eq!(h.expression_type, None);
        assert_eq!(h.bname, None);
        assert_eq!(PullMessageRequestHeader::from_ext(&h.to_ext()).unwrap(), h);

        let mut missing = ext.clone();
        missing.remove("subVersion");
        assert_eq!(
            PullMessageRequestHeader::from_ext(&missing),
            Err(HeaderError::Missing {
                field: "subVersion"
            })
        );
    }

    /// `cpp_pull_message_found.resp.json`.
    #[test]
    fn cpp_pull_message_response() {
        let ext = ext(&[
            ("suggestWhichBrokerId", "0"),
            ("nextBeginOffset", "2"),
            ("minOffset", "0"),
            ("maxOffset", "2"),
            ("topicSysFlag", "0"),
            ("groupSysFlag", "0"),
        ]);
        let h = PullMessageResponseHeader::from_ext(&ext).unwrap();
        assert_eq!(
            h,
            PullMessageResponseHeader {
                suggest_which_broker_id: 0,
                next_begin_offset: 2,
                min_offset: 0,
                max_offset: 2,
                offset_delta: None,
                topic_sys_flag: Some(0),
                group_sys_flag: Some(0),
                forbidden_type: None,
            }
        );
        assert_eq!(
            h.to_ext(),
            ext,
            "same keys, values and order as the fixture"
        );
    }
}
