//! The sidecar's request errors: one enum, mapped to the Remoting response code and remark an
//! SDK gets. Retry decisions read the variant ([`SidecarError::retryable`]), never the text.

use rocketmesh_filters::codec::codes::response_code;
use rocketmesh_filters::codec::ext::HeaderError;
use rocketmesh_xds::client::RouteError;

use super::upstream::UpstreamError;

/// Why a request through the sidecar failed.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The control plane says the topic does not exist (TOPIC_NOT_EXIST, the nameserver's text).
    #[error("No topic route info in name server for the topic: {0}")]
    TopicMissing(String),
    /// The topic's route could not be had (timeout, invalid name, subscription limit, stopped).
    #[error(transparent)]
    Route(RouteError),
    /// The topic's routes match no rule for this request code.
    #[error("No route for request code {code} on topic {topic}")]
    NoRoute { code: i32, topic: String },
    #[error("no writable broker for topic {0}")]
    NoWritableBroker(String),
    #[error("no readable broker for topic {0}")]
    NoReadableBroker(String),
    #[error("broker {broker} is not readable for {topic}")]
    NotReadable { broker: String, topic: String },
    /// A pop handle (or batch ack) names a broker the topic's route does not have.
    #[error("broker {broker} of the pop handle is not in the route of {topic}")]
    UnknownBroker { broker: String, topic: String },
    /// A custom header that cannot be read (missing or malformed field).
    #[error(transparent)]
    BadHeader(#[from] HeaderError),
    /// A body (or a field inside one) that cannot be read.
    #[error("bad {what}: {reason}")]
    BadBody { what: &'static str, reason: String },
    /// The upstream broker could not be reached or did not answer. `sent` is false when the
    /// request certainly never left (safe to try another broker).
    #[error("{source}")]
    Upstream {
        #[source]
        source: UpstreamError,
        sent: bool,
    },
    /// A broker refused the request: its code and remark go back to the SDK unchanged.
    #[error("{remark}")]
    Refused { code: i32, remark: String },
    /// END_TRANSACTION for a half message this sidecar cannot place.
    #[error("END_TRANSACTION: {0}")]
    Transaction(String),
    /// The Pull -> Pop translator refused or failed (the remark says why).
    #[error("{0}")]
    Pull(String),
    /// The sidecar is draining: new work is refused so the SDK retries elsewhere or later.
    #[error("sidecar {0} is shutting down")]
    Draining(String),
}

impl SidecarError {
    /// The response code an SDK gets for this error.
    pub fn code(&self) -> i32 {
        match self {
            SidecarError::TopicMissing(_) => response_code::TOPIC_NOT_EXIST,
            SidecarError::Refused { code, .. } => *code,
            _ => response_code::SYSTEM_ERROR,
        }
    }

    /// True when the request certainly did not reach a broker, so another may take it.
    pub fn retryable(&self) -> bool {
        matches!(self, SidecarError::Upstream { sent: false, .. })
    }

    /// A body that cannot be read.
    pub fn bad_body(what: &'static str, reason: impl ToString) -> Self {
        SidecarError::BadBody {
            what,
            reason: reason.to_string(),
        }
    }
}

impl From<RouteError> for SidecarError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Missing(topic) => SidecarError::TopicMissing(topic),
            other => SidecarError::Route(other),
        }
    }
}

impl From<UpstreamError> for SidecarError {
    fn from(source: UpstreamError) -> Self {
        SidecarError::Upstream {
            sent: !source.not_sent(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retry_follow_the_variant() {
        let missing = SidecarError::from(RouteError::Missing("T".into()));
        assert_eq!(missing.code(), response_code::TOPIC_NOT_EXIST);
        assert_eq!(
            missing.to_string(),
            "No topic route info in name server for the topic: T"
        );
        let refused = SidecarError::Refused {
            code: response_code::NO_PERMISSION,
            remark: "no".into(),
        };
        assert_eq!(refused.code(), response_code::NO_PERMISSION);
        let not_sent = SidecarError::from(UpstreamError::Connect {
            addr: "127.0.0.1:1".into(),
            reason: "refused".into(),
        });
        assert!(not_sent.retryable());
        assert_eq!(not_sent.code(), response_code::SYSTEM_ERROR);
        assert!(!SidecarError::NoWritableBroker("T".into()).retryable());
    }
}
