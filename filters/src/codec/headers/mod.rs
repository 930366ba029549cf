//! Typed custom headers, one struct per Remoting header class.
//!
//! Every struct implements [`CommandHeader`](super::ext::CommandHeader): `from_ext` reads it
//! from a command's [`ExtFields`](super::ext::ExtFields) (unknown keys, such as the C++
//! client's `Signature`/`AccessKey`/`OnsChannel`, are ignored), and `write_ext` writes every
//! required field plus every optional field that is `Some`, under the exact wire key (the Java
//! field name). Field types follow the protocol reference (section 4): `S` → `String`,
//! `I` → `i32`, `L` → `i64`, `B` → `bool`; fields not marked `@CFNotNull` are `Option<_>`.
//!
//! A missing required field gives [`HeaderError::Missing`](super::ext::HeaderError::Missing)
//! naming the wire key; a field that does not parse gives
//! [`HeaderError::Invalid`](super::ext::HeaderError::Invalid). Fields are checked in
//! declaration order, so the error names the first bad field.
//!
//! Each header also implements [`HeaderSchema`], which lists its wire keys (in write order) and
//! which of them are required.
//!
//! Areas:
//! * [`send`]: SEND_MESSAGE (10), SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE (320).
//! * [`pull`]: PULL_MESSAGE (11) and [`PullSysFlag`].
//! * [`pop`]: POP_MESSAGE, ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME, NOTIFICATION.
//! * [`offset`]: consumer offsets and min/max/search offsets.
//! * [`consumer`]: send-back, consumer list, unregister client, consumer-ids-changed.
//! * [`transaction`]: END_TRANSACTION and CHECK_TRANSACTION_STATE.
//! * [`namesrv`]: route lookup, broker registration, topic creation.

/// One wire key of a header and whether it is required (`@CFNotNull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// The key in `extFields` (the Java field name).
    pub key: &'static str,
    /// Whether a missing key is an error when reading the header.
    pub required: bool,
}

/// The static description of a typed header: its wire keys.
pub trait HeaderSchema {
    /// Every wire key of the header, in the order `write_ext` writes them.
    const FIELDS: &'static [FieldSpec];

    /// The keys that must be present for `from_ext` to succeed.
    fn required_keys() -> impl Iterator<Item = &'static str> {
        Self::FIELDS.iter().filter(|f| f.required).map(|f| f.key)
    }
}

/// Declares a header struct and implements `CommandHeader` and [`HeaderSchema`] for it.
///
/// Each field line reads `required name: Type = "wireKey"` or `optional name: Type = "wireKey"`;
/// optional fields become `Option<Type>`. Doc comments on the struct and fields are kept.
macro_rules! command_header {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $kind:ident $field:ident : $ty:ty = $key:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: command_header!(@type $kind $ty),
            )*
        }

        impl $crate::codec::headers::HeaderSchema for $name {
            const FIELDS: &'static [$crate::codec::headers::FieldSpec] = &[$(
                $crate::codec::headers::FieldSpec {
                    key: $key,
                    required: command_header!(@required $kind),
                },
            )*];
        }

        impl $crate::codec::ext::CommandHeader for $name {
            fn from_ext(
                ext: &$crate::codec::ext::ExtFields,
            ) -> ::std::result::Result<Self, $crate::codec::ext::HeaderError> {
                Ok(Self {
                    $( $field: command_header!(@read $kind ext, $key, $ty), )*
                })
            }

            fn write_ext(&self, ext: &mut $crate::codec::ext::ExtFields) {
                $( command_header!(@write $kind ext, $key, self.$field); )*
            }
        }
    };

    (@type required $ty:ty) => { $ty };
    (@type optional $ty:ty) => { ::std::option::Option<$ty> };

    (@required required) => { true };
    (@required optional) => { false };

    (@read required $ext:ident, $key:literal, $ty:ty) => { $ext.required::<$ty>($key)? };
    (@read optional $ext:ident, $key:literal, $ty:ty) => { $ext.optional::<$ty>($key)? };

    (@write required $ext:ident, $key:literal, $value:expr) => { $ext.put($key, &$value) };
    (@write optional $ext:ident, $key:literal, $value:expr) => {
        $ext.put_opt($key, $value.as_ref())
    };
}

pub mod admin;
pub mod consumer;
pub mod namesrv;
pub mod offset;
pub mod pop;
pub mod pull;
pub mod send;
pub mod transaction;

pub use admin::{
    ConsumeMessageDirectlyResultRequestHeader, GetConsumeStatsRequestHeader,
    GetConsumerConnectionListRequestHeader, GetConsumerRunningInfoRequestHeader,
    GetTopicStatsInfoRequestHeader, QueryMessageRequestHeader, QueryMessageResponseHeader,
    QueryTopicConsumeByWhoRequestHeader, ViewMessageRequestHeader, UNIQUE_KEY_QUERY,
};
pub use consumer::{
    ConsumerSendMsgBackRequestHeader, GetConsumerListByGroupRequestHeader,
    NotifyConsumerIdsChangedRequestHeader, UnregisterClientRequestHeader,
};
pub use namesrv::{
    CreateTopicRequestHeader, GetRouteInfoRequestHeader, RegisterBrokerRequestHeader,
    RegisterBrokerResponseHeader, UnregisterBrokerRequestHeader,
};
pub use offset::{
    GetMaxOffsetRequestHeader, GetMinOffsetRequestHeader, OffsetResponseHeader,
    QueryConsumerOffsetRequestHeader, QueryConsumerOffsetResponseHeader, SearchOffsetRequestHeader,
    UpdateConsumerOffsetRequestHeader,
};
pub use pop::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    NotificationRequestHeader, NotificationResponseHeader, PopMessageRequestHeader,
    PopMessageResponseHeader,
};
pub use pull::{PullMessageRequestHeader, PullMessageResponseHeader, PullSysFlag};
pub use send::{SendMessageRequestHeader, SendMessageRequestHeaderV2, SendMessageResponseHeader};
pub use transaction::{CheckTransactionStateRequestHeader, EndTransactionRequestHeader};

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared checks run against a fully populated value of every header.

    use std::fmt::Debug;

    use super::HeaderSchema;
    use crate::codec::ext::{CommandHeader, ExtFields, HeaderError};

    /// Builds ext fields from string literals (the form a decoded frame has).
    pub fn ext(pairs: &[(&str, &str)]) -> ExtFields {
        pairs.iter().map(|&(k, v)| (k, v)).collect()
    }

    /// Checks `full` (every optional field `Some`) and `minimal` (every optional field `None`):
    /// round trips, exact key sets, missing-field and malformed-field errors.
    pub fn check_header<H>(full: &H, minimal: &H)
    where
        H: CommandHeader + HeaderSchema + PartialEq + Debug,
    {
        // Round trips.
        let full_ext = full.to_ext();
        assert_eq!(&H::from_ext(&full_ext).unwrap(), full);
        let min_ext = minimal.to_ext();
        assert_eq!(&H::from_ext(&min_ext).unwrap(), minimal);

        // The full value writes every declared key, in declaration order; the minimal one only
        // the required keys.
        let written: Vec<&str> = full_ext.iter().map(|(k, _)| k).collect();
        let declared: Vec<&str> = H::FIELDS.iter().map(|f| f.key).collect();
        assert_eq!(
            written, declared,
            "full value must set every optional field"
        );
        let written_min: Vec<&str> = min_ext.iter().map(|(k, _)| k).collect();
        let required: Vec<&str> = H::required_keys().collect();
        assert_eq!(
            written_min, required,
            "minimal value must leave optionals None"
        );

        // Unknown keys are ignored.
        let mut noisy = full_ext.clone();
        noisy.insert("Signature", "zmDewOu4ndR3m0jQeq9/mQ8cP/U=");
        noisy.insert("AccessKey", "");
        noisy.insert("OnsChannel", "ALIYUN");
        assert_eq!(&H::from_ext(&noisy).unwrap(), full);

        for field in H::FIELDS {
            // A missing required key is named; a missing optional key is fine.
            let mut without = full_ext.clone();
            without.remove(field.key);
            match H::from_ext(&without) {
                Err(err) => {
                    assert!(field.required, "optional `{}` reported missing", field.key);
                    assert_eq!(err, HeaderError::Missing { field: field.key });
                }
                Ok(_) => assert!(!field.required, "required `{}` not enforced", field.key),
            }

            // A malformed value is named (string fields accept anything).
            let mut bad = full_ext.clone();
            bad.insert(field.key, "not-a-value");
            if let Err(err) = H::from_ext(&bad) {
                assert!(
                    matches!(err, HeaderError::Invalid { field: f, .. } if f == field.key),
                    "{err:?} should name `{}`",
                    field.key
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_required_keys() {
        let required: Vec<_> = OffsetResponseHeader::required_keys().collect();
        assert_eq!(required, ["offset"]);
        let keys: Vec<_> = UnregisterClientRequestHeader::FIELDS
            .iter()
            .map(|f| (f.key, f.required))
            .collect();
        assert_eq!(
            keys,
            [
                ("clientID", true),
                ("producerGroup", false),
                ("consumerGroup", false)
            ]
        );
    }
}
