//! The sidecar's authorization policy: which topics a workload may produce to and consume from,
//! and which consumer groups it may use.
//!
//! ```yaml
//! produce: [OrderTopic, "audit-*"]   # topics sends may name
//! consume: [OrderTopic]              # topics pulls, pops, acks, offsets, subscriptions name
//! groups: ["GID_orders*"]            # consumer groups (their retry topics included)
//! ```
//!
//! A pattern is a name, or a glob where `*` matches any run of characters (`*` alone: all). A
//! list that is absent allows nothing: the policy says what is allowed. Which resources a
//! request needs is [`super::resource::needs`]: a topic with PUB is checked against `produce`,
//! a topic with SUB against `consume`, a group against `groups`.

use serde::Deserialize;
use thiserror::Error;

use super::resource::{needs, Perm, Resource};
use crate::codec::RemotingCommand;

/// Most patterns per list.
pub const MAX_PATTERNS: usize = 4096;
/// Longest pattern.
pub const MAX_PATTERN_LEN: usize = 512;

/// Why the policy refused a request (the stat label and the remark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    Produce,
    Consume,
    Group,
    /// The request's resources could not be read (malformed body).
    Unreadable,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Produce => "produce",
            DenyReason::Consume => "consume",
            DenyReason::Group => "group",
            DenyReason::Unreadable => "unreadable",
        }
    }
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{remark}")]
pub struct AuthzDenied {
    pub reason: DenyReason,
    pub remark: String,
}

/// A policy file that cannot be used.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("not a policy: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    produce: Option<Vec<String>>,
    #[serde(default)]
    consume: Option<Vec<String>>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

/// A loaded policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    pub produce: Vec<String>,
    pub consume: Vec<String>,
    pub groups: Vec<String>,
}

/// Whether `name` matches `pattern` (`*` = any run of characters).
pub fn glob(pattern: &str, name: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut tail) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for p in parts {
        match tail.find(p) {
            Some(i) => tail = &tail[i + p.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob(p, name))
}

impl Policy {
    /// Parses the policy file's text.
    pub fn parse(yaml: &str) -> Result<Self, PolicyError> {
        let f: PolicyFile = if yaml.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_yaml_ng::from_str(yaml)?
        };
        let p = Policy {
            produce: f.produce.unwrap_or_default(),
            consume: f.consume.unwrap_or_default(),
            groups: f.groups.unwrap_or_default(),
        };
        for (what, list) in [
            ("produce", &p.produce),
            ("consume", &p.consume),
            ("groups", &p.groups),
        ] {
            if list.len() > MAX_PATTERNS {
                return Err(PolicyError::Invalid(format!(
                    "{what}: more than {MAX_PATTERNS} patterns"
                )));
            }
            if let Some(bad) = list
                .iter()
                .find(|s| s.is_empty() || s.len() > MAX_PATTERN_LEN)
            {
                return Err(PolicyError::Invalid(format!(
                    "{what}: pattern {bad:?} is empty or longer than {MAX_PATTERN_LEN}"
                )));
            }
        }
        Ok(p)
    }

    /// Checks a request from the application.
    pub fn check(&self, cmd: &RemotingCommand) -> Result<(), AuthzDenied> {
        let n = needs(cmd).map_err(|e| AuthzDenied {
            reason: DenyReason::Unreadable,
            remark: format!("rocketmesh authz: cannot check the request: {e}"),
        })?;
        for (resource, perm) in &n.resources {
            let (ok, reason, verb) = match resource {
                Resource::Topic(t) if *perm == Perm::PUB => {
                    (any(&self.produce, t), DenyReason::Produce, "produce to")
                }
                Resource::Topic(t) => (any(&self.consume, t), DenyReason::Consume, "consume from"),
                Resource::Group(g) => (any(&self.groups, g), DenyReason::Group, "use"),
            };
            if !ok {
                return Err(AuthzDenied {
                    reason,
                    remark: format!("rocketmesh authz: this workload may not {verb} {resource}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::codes::request_code as rc;

    fn req(code: i32, fields: &[(&str, &str)]) -> RemotingCommand {
        let mut r = RemotingCommand::request(code);
        for (k, v) in fields {
            r.ext_mut().insert(k, v);
        }
        r
    }

    #[test]
    fn globs() {
        assert!(glob("*", "") && glob("*", "abc"));
        assert!(glob("abc", "abc") && !glob("abc", "abcd"));
        assert!(glob("a*", "abc") && glob("*c", "abc") && glob("a*c", "abc"));
        assert!(glob("a*b*c", "a-b-c") && !glob("a*b*c", "a-c-b"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn decisions() {
        let p = Policy::parse("produce: [Orders, 'audit-*']\nconsume: [Orders]\ngroups: ['GID_*']")
            .unwrap();
        assert!(p
            .check(&req(rc::SEND_MESSAGE, &[("topic", "audit-x")]))
            .is_ok());
        let e = p
            .check(&req(rc::SEND_MESSAGE_V2, &[("b", "Payments")]))
            .unwrap_err();
        assert_eq!(e.reason, DenyReason::Produce);
        assert!(e.remark.contains("Payments"), "{e}");
        let pop = |g: &str, t: &str| req(rc::POP_MESSAGE, &[("consumerGroup", g), ("topic", t)]);
        assert!(p.check(&pop("GID_a", "Orders")).is_ok());
        assert_eq!(
            p.check(&pop("other", "Orders")).unwrap_err().reason,
            DenyReason::Group
        );
        assert_eq!(
            p.check(&pop("GID_a", "audit-x")).unwrap_err().reason,
            DenyReason::Consume
        );
        // Route look-ups need nothing.
        assert!(p
            .check(&req(rc::GET_ROUTEINFO_BY_TOPIC, &[("topic", "Secret")]))
            .is_ok());
        // An empty policy allows nothing that names a resource.
        let none = Policy::parse("").unwrap();
        assert!(none
            .check(&req(rc::SEND_MESSAGE, &[("topic", "Orders")]))
            .is_err());
    }

    #[test]
    fn bad_policies() {
        assert!(Policy::parse("produce: Orders").is_err());
        assert!(
            Policy::parse("publish: [Orders]").is_err(),
            "unknown keys are typos"
        );
        assert!(Policy::parse("produce: ['']").is_err());
    }
}
