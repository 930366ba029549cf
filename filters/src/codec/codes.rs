//! Request codes, response codes, language codes and serialize types.
//!
//! Values are facts from Apache RocketMQ's `RequestCode`, `ResponseCode`, `RemotingSysResponseCode`,
//! `LanguageCode` and `SerializeType` (see `docs/remoting-protocol.md` sections 1-3).

/// Request codes (`RequestCode`).
pub mod request_code {
    pub const SEND_MESSAGE: i32 = 10;
    pub const PULL_MESSAGE: i32 = 11;
    pub const QUERY_MESSAGE: i32 = 12;
    pub const QUERY_CONSUMER_OFFSET: i32 = 14;
    pub const UPDATE_CONSUMER_OFFSET: i32 = 15;
    pub const UPDATE_AND_CREATE_TOPIC: i32 = 17;
    pub const GET_ALL_TOPIC_CONFIG: i32 = 21;
    pub const GET_BROKER_RUNTIME_INFO: i32 = 28;
    pub const SEARCH_OFFSET_BY_TIMESTAMP: i32 = 29;
    pub const GET_MAX_OFFSET: i32 = 30;
    pub const GET_MIN_OFFSET: i32 = 31;
    pub const GET_EARLIEST_MSG_STORETIME: i32 = 32;
    pub const VIEW_MESSAGE_BY_ID: i32 = 33;
    pub const HEART_BEAT: i32 = 34;
    pub const UNREGISTER_CLIENT: i32 = 35;
    pub const CONSUMER_SEND_MSG_BACK: i32 = 36;
    pub const END_TRANSACTION: i32 = 37;
    pub const GET_CONSUMER_LIST_BY_GROUP: i32 = 38;
    pub const CHECK_TRANSACTION_STATE: i32 = 39;
    pub const NOTIFY_CONSUMER_IDS_CHANGED: i32 = 40;
    pub const LOCK_BATCH_MQ: i32 = 41;
    pub const UNLOCK_BATCH_MQ: i32 = 42;
    pub const CHECK_CLIENT_CONFIG: i32 = 46;
    pub const GET_KV_CONFIG: i32 = 101;
    pub const REGISTER_BROKER: i32 = 103;
    pub const UNREGISTER_BROKER: i32 = 104;
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
    pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
    pub const GET_TOPIC_STATS_INFO: i32 = 202;
    pub const GET_CONSUMER_CONNECTION_LIST: i32 = 203;
    pub const GET_ALL_TOPIC_LIST_FROM_NAMESERVER: i32 = 206;
    pub const GET_CONSUME_STATS: i32 = 208;
    pub const QUERY_TOPIC_CONSUME_BY_WHO: i32 = 300;
    pub const REGISTER_TOPIC_IN_NAMESRV: i32 = 217;
    pub const RESET_CONSUMER_CLIENT_OFFSET: i32 = 220;
    pub const GET_CONSUMER_STATUS_FROM_CLIENT: i32 = 221;
    pub const GET_CONSUMER_RUNNING_INFO: i32 = 307;
    pub const CONSUME_MESSAGE_DIRECTLY: i32 = 309;
    pub const SEND_MESSAGE_V2: i32 = 310;
    pub const SEND_BATCH_MESSAGE: i32 = 320;
    pub const SEND_REPLY_MESSAGE: i32 = 324;
    pub const SEND_REPLY_MESSAGE_V2: i32 = 325;
    pub const PUSH_REPLY_MESSAGE_TO_CLIENT: i32 = 326;
    pub const GET_TOPIC_CONFIG: i32 = 351;
    pub const LITE_PULL_MESSAGE: i32 = 361;
    pub const QUERY_ASSIGNMENT: i32 = 400;
    pub const SET_MESSAGE_REQUEST_MODE: i32 = 401;
    pub const GET_ALL_MESSAGE_REQUEST_MODE: i32 = 402;
    pub const POP_MESSAGE: i32 = 200050;
    pub const ACK_MESSAGE: i32 = 200051;
    pub const PEEK_MESSAGE: i32 = 200052;
    pub const CHANGE_MESSAGE_INVISIBLETIME: i32 = 200053;
    pub const NOTIFICATION: i32 = 200054;
    pub const POLLING_INFO: i32 = 200055;
    pub const BATCH_ACK_MESSAGE: i32 = 200151;

    /// Request codes above `i16::MAX`: the Java encoder writes `(short) code` into a ROCKETMQ binary
    /// header, so these arrive truncated (200050 as 3442, ...). [`from_truncated`] maps them back.
    pub const WIDE_CODES: [i32; 7] = [
        POP_MESSAGE,
        ACK_MESSAGE,
        PEEK_MESSAGE,
        CHANGE_MESSAGE_INVISIBLETIME,
        NOTIFICATION,
        POLLING_INFO,
        BATCH_ACK_MESSAGE,
    ];

    /// Maps a request code read from a binary header's int16 back to its canonical value when it is
    /// the truncation of one of [`WIDE_CODES`]; any other code is returned unchanged.
    pub fn from_truncated(code: i32) -> i32 {
        WIDE_CODES
            .iter()
            .copied()
            .find(|wide| i32::from(*wide as i16) == code)
            .unwrap_or(code)
    }

    /// Whether `code` fits the binary header's int16 `code` field.
    pub fn fits_binary(code: i32) -> bool {
        i16::try_from(code).is_ok()
    }

    /// A human-readable name for logs and remarks, `None` for codes we do not know.
    pub fn name(code: i32) -> Option<&'static str> {
        Some(match code {
            SEND_MESSAGE => "SEND_MESSAGE",
            PULL_MESSAGE => "PULL_MESSAGE",
            QUERY_MESSAGE => "QUERY_MESSAGE",
            QUERY_CONSUMER_OFFSET => "QUERY_CONSUMER_OFFSET",
            UPDATE_CONSUMER_OFFSET => "UPDATE_CONSUMER_OFFSET",
            UPDATE_AND_CREATE_TOPIC => "UPDATE_AND_CREATE_TOPIC",
            GET_ALL_TOPIC_CONFIG => "GET_ALL_TOPIC_CONFIG",
            SEARCH_OFFSET_BY_TIMESTAMP => "SEARCH_OFFSET_BY_TIMESTAMP",
            GET_BROKER_RUNTIME_INFO => "GET_BROKER_RUNTIME_INFO",
            GET_MAX_OFFSET => "GET_MAX_OFFSET",
            GET_MIN_OFFSET => "GET_MIN_OFFSET",
            GET_EARLIEST_MSG_STORETIME => "GET_EARLIEST_MSG_STORETIME",
            VIEW_MESSAGE_BY_ID => "VIEW_MESSAGE_BY_ID",
            HEART_BEAT => "HEART_BEAT",
            UNREGISTER_CLIENT => "UNREGISTER_CLIENT",
            CONSUMER_SEND_MSG_BACK => "CONSUMER_SEND_MSG_BACK",
            END_TRANSACTION => "END_TRANSACTION",
            GET_CONSUMER_LIST_BY_GROUP => "GET_CONSUMER_LIST_BY_GROUP",
            CHECK_TRANSACTION_STATE => "CHECK_TRANSACTION_STATE",
            NOTIFY_CONSUMER_IDS_CHANGED => "NOTIFY_CONSUMER_IDS_CHANGED",
            LOCK_BATCH_MQ => "LOCK_BATCH_MQ",
            UNLOCK_BATCH_MQ => "UNLOCK_BATCH_MQ",
            CHECK_CLIENT_CONFIG => "CHECK_CLIENT_CONFIG",
            GET_KV_CONFIG => "GET_KV_CONFIG",
            REGISTER_BROKER => "REGISTER_BROKER",
            UNREGISTER_BROKER => "UNREGISTER_BROKER",
            GET_ROUTEINFO_BY_TOPIC => "GET_ROUTEINFO_BY_TOPIC",
            GET_BROKER_CLUSTER_INFO => "GET_BROKER_CLUSTER_INFO",
            GET_TOPIC_STATS_INFO => "GET_TOPIC_STATS_INFO",
            GET_CONSUMER_CONNECTION_LIST => "GET_CONSUMER_CONNECTION_LIST",
            GET_ALL_TOPIC_LIST_FROM_NAMESERVER => "GET_ALL_TOPIC_LIST_FROM_NAMESERVER",
            GET_CONSUME_STATS => "GET_CONSUME_STATS",
            QUERY_TOPIC_CONSUME_BY_WHO => "QUERY_TOPIC_CONSUME_BY_WHO",
            REGISTER_TOPIC_IN_NAMESRV => "REGISTER_TOPIC_IN_NAMESRV",
            RESET_CONSUMER_CLIENT_OFFSET => "RESET_CONSUMER_CLIENT_OFFSET",
            GET_CONSUMER_STATUS_FROM_CLIENT => "GET_CONSUMER_STATUS_FROM_CLIENT",
            GET_CONSUMER_RUNNING_INFO => "GET_CONSUMER_RUNNING_INFO",
            CONSUME_MESSAGE_DIRECTLY => "CONSUME_MESSAGE_DIRECTLY",
            SEND_MESSAGE_V2 => "SEND_MESSAGE_V2",
            SEND_BATCH_MESSAGE => "SEND_BATCH_MESSAGE",
            SEND_REPLY_MESSAGE => "SEND_REPLY_MESSAGE",
            SEND_REPLY_MESSAGE_V2 => "SEND_REPLY_MESSAGE_V2",
            PUSH_REPLY_MESSAGE_TO_CLIENT => "PUSH_REPLY_MESSAGE_TO_CLIENT",
            GET_TOPIC_CONFIG => "GET_TOPIC_CONFIG",
            LITE_PULL_MESSAGE => "LITE_PULL_MESSAGE",
            QUERY_ASSIGNMENT => "QUERY_ASSIGNMENT",
            SET_MESSAGE_REQUEST_MODE => "SET_MESSAGE_REQUEST_MODE",
            GET_ALL_MESSAGE_REQUEST_MODE => "GET_ALL_MESSAGE_REQUEST_MODE",
            POP_MESSAGE => "POP_MESSAGE",
            ACK_MESSAGE => "ACK_MESSAGE",
            PEEK_MESSAGE => "PEEK_MESSAGE",
            CHANGE_MESSAGE_INVISIBLETIME => "CHANGE_MESSAGE_INVISIBLETIME",
            NOTIFICATION => "NOTIFICATION",
            POLLING_INFO => "POLLING_INFO",
            BATCH_ACK_MESSAGE => "BATCH_ACK_MESSAGE",
            _ => return None,
        })
    }
}

/// Response codes (`RemotingSysResponseCode` and `ResponseCode`).
pub mod response_code {
    pub const SUCCESS: i32 = 0;
    pub const SYSTEM_ERROR: i32 = 1;
    pub const SYSTEM_BUSY: i32 = 2;
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    pub const TRANSACTION_FAILED: i32 = 4;
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    pub const MESSAGE_ILLEGAL: i32 = 13;
    pub const SERVICE_NOT_AVAILABLE: i32 = 14;
    pub const VERSION_NOT_SUPPORTED: i32 = 15;
    pub const NO_PERMISSION: i32 = 16;
    pub const TOPIC_NOT_EXIST: i32 = 17;
    pub const TOPIC_EXIST_ALREADY: i32 = 18;
    pub const PULL_NOT_FOUND: i32 = 19;
    pub const PULL_RETRY_IMMEDIATELY: i32 = 20;
    pub const PULL_OFFSET_MOVED: i32 = 21;
    pub const QUERY_NOT_FOUND: i32 = 22;
    pub const SUBSCRIPTION_PARSE_FAILED: i32 = 23;
    pub const SUBSCRIPTION_NOT_EXIST: i32 = 24;
    pub const SUBSCRIPTION_NOT_LATEST: i32 = 25;
    pub const SUBSCRIPTION_GROUP_NOT_EXIST: i32 = 26;
    pub const FILTER_DATA_NOT_EXIST: i32 = 27;
    pub const FILTER_DATA_NOT_LATEST: i32 = 28;
    pub const INVALID_PARAMETER: i32 = 29;
    pub const TRANSACTION_SHOULD_COMMIT: i32 = 200;
    pub const TRANSACTION_SHOULD_ROLLBACK: i32 = 201;
    pub const TRANSACTION_STATE_UNKNOW: i32 = 202;
    pub const TRANSACTION_STATE_GROUP_WRONG: i32 = 203;
    pub const NO_BUYER_ID: i32 = 204;
    pub const NOT_IN_CURRENT_UNIT: i32 = 205;
    pub const CONSUMER_NOT_ONLINE: i32 = 206;
    pub const CONSUME_MSG_TIMEOUT: i32 = 207;
    pub const NO_MESSAGE: i32 = 208;
    pub const POLLING_FULL: i32 = 209;
    pub const POLLING_TIMEOUT: i32 = 210;
    pub const BROKER_NOT_EXIST: i32 = 211;
    pub const BROKER_DISPATCH_NOT_COMPLETE: i32 = 212;
    pub const BROADCAST_CONSUMPTION: i32 = 213;
    pub const FLOW_CONTROL: i32 = 215;
    pub const NOT_LEADER_FOR_QUEUE: i32 = 501;
    pub const ILLEGAL_OPERATION: i32 = 604;
    pub const GO_AWAY: i32 = 1500;
}

/// The `language` of a command's sender (`LanguageCode`): a name in JSON headers, a byte in binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LanguageCode(pub u8);

impl LanguageCode {
    pub const JAVA: Self = Self(0);
    pub const CPP: Self = Self(1);
    pub const DOTNET: Self = Self(2);
    pub const PYTHON: Self = Self(3);
    pub const DELPHI: Self = Self(4);
    pub const ERLANG: Self = Self(5);
    pub const RUBY: Self = Self(6);
    pub const OTHER: Self = Self(7);
    pub const HTTP: Self = Self(8);
    pub const GO: Self = Self(9);
    pub const PHP: Self = Self(10);
    pub const OMS: Self = Self(11);
    pub const RUST: Self = Self(12);
    pub const NODE_JS: Self = Self(13);

    const NAMES: [&'static str; 14] = [
        "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO",
        "PHP", "OMS", "RUST", "NODE_JS",
    ];

    /// The enum name Java writes in JSON headers; codes we do not know are written as `OTHER`.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("OTHER")
    }

    /// The enum name, `None` for a code we do not know.
    pub fn known_name(self) -> Option<&'static str> {
        Self::NAMES.get(usize::from(self.0)).copied()
    }

    /// Parses an enum name (as written in JSON headers). Unknown names give `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self(i as u8))
    }
}

impl Default for LanguageCode {
    fn default() -> Self {
        Self::RUST
    }
}

/// How a command's header is encoded: the high byte of the frame's header word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SerializeType {
    /// fastjson-style JSON text (the default of every SDK).
    #[default]
    Json,
    /// RocketMQ's own binary layout (`RocketMQSerializable`).
    Rocketmq,
}

impl SerializeType {
    /// The wire value (high byte of the header word).
    pub fn wire(self) -> u8 {
        match self {
            Self::Json => 0,
            Self::Rocketmq => 1,
        }
    }

    /// Parses the wire value.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Json),
            1 => Some(Self::Rocketmq),
            _ => None,
        }
    }
}

/// `flag` bit 0: the command is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// `flag` bit 1: the request wants no response.
pub const FLAG_ONEWAY: i32 = 1 << 1;

/// The `version` we put in the commands we create: the ordinal of Apache RocketMQ `V5_3_0`
/// (a version >= 401 makes clients treat us as a modern broker, see protocol notes 1.6).
pub const ROCKETMESH_VERSION: i32 = 473;
/// Ordinal of `V4_9_4`: from this version on a nameserver writes standard (quoted-key) route JSON.
pub const VERSION_4_9_4: i32 = 401;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_pop_codes_map_back() {
        assert_eq!(
            request_code::from_truncated(3442),
            request_code::POP_MESSAGE
        );
        assert_eq!(
            request_code::from_truncated(3443),
            request_code::ACK_MESSAGE
        );
        assert_eq!(
            request_code::from_truncated(3445),
            request_code::CHANGE_MESSAGE_INVISIBLETIME
        );
        assert_eq!(
            request_code::from_truncated(3543),
            request_code::BATCH_ACK_MESSAGE
        );
        assert_eq!(request_code::from_truncated(310), 310);
        assert!(!request_code::fits_binary(request_code::POP_MESSAGE));
        assert!(request_code::fits_binary(request_code::SEND_MESSAGE_V2));
    }

    #[test]
    fn language_names_round_trip() {
        for code in 0..14u8 {
            let lang = LanguageCode(code);
            assert_eq!(LanguageCode::from_name(lang.name()), Some(lang));
        }
        assert_eq!(LanguageCode(200).name(), "OTHER");
        assert_eq!(LanguageCode::from_name("COBOL"), None);
    }
}
