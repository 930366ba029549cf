//! Apache RocketMQ's `plain_acl.yml` and its decision (`PlainPermissionManager.validate`).
//!
//! ```yaml
//! globalWhiteRemoteAddresses: ["10.10.103.*", "192.168.0.*"]
//! accounts:
//!   - accessKey: RocketMQ
//!     secretKey: 12345678
//!     whiteRemoteAddress:
//!     admin: false
//!     defaultTopicPerm: DENY
//!     defaultGroupPerm: SUB
//!     topicPerms: [topicA=DENY, topicB=PUB|SUB, topicC=SUB]
//!     groupPerms: [groupA=DENY, groupB=PUB|SUB, groupC=SUB]
//! ```
//!
//! Scalars are read as text whatever their YAML type (`secretKey: 12345678` is a string, as
//! snakeyaml reads it into Apache's String field); unknown keys (`dataVersion`, ...) are
//! ignored, so existing files load unchanged.
//!
//! Decision, in Apache's order: a remote address in `globalWhiteRemoteAddresses` passes; else the
//! request must name a known `AccessKey`; an address matching that account's
//! `whiteRemoteAddress` passes; else the `Signature` must verify under the account's secret;
//! then an admin code needs `admin: true`, and every resource ([`super::resource::needs`]) its
//! permission: the listed one, else `defaultTopicPerm` / `defaultGroupPerm` (absent = DENY). An
//! admin account that lists no topic or group permission may do anything.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde_yaml_ng::Value;
use thiserror::Error;

use super::addr::AddrPattern;
use super::resource::{needs, Perm, Resource};
use super::sign::{self, ACCESS_KEY};
use crate::codec::RemotingCommand;

/// Most accounts one file may hold.
pub const MAX_ACCOUNTS: usize = 10_000;
/// Largest accounts file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A `plain_acl.yml` that cannot be used.
#[derive(Debug, Error)]
pub enum AclFileError {
    #[error("not YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{0}")]
    Invalid(String),
}

/// One account.
#[derive(Clone)]
pub struct Account {
    pub access_key: String,
    secret_key: String,
    pub white: Option<AddrPattern>,
    pub admin: bool,
    pub default_topic_perm: Perm,
    pub default_group_perm: Perm,
    pub topic_perms: HashMap<String, Perm>,
    pub group_perms: HashMap<String, Perm>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Account {
    fn perm(&self, r: &Resource) -> Perm {
        match r {
            Resource::Topic(t) => *self.topic_perms.get(t).unwrap_or(&self.default_topic_perm),
            Resource::Group(g) => *self.group_perms.get(g).unwrap_or(&self.default_group_perm),
        }
    }

    /// The account as JSON for `/config_dump`: everything but the secret.
    pub fn redacted_json(&self) -> serde_json::Value {
        let perms = |m: &HashMap<String, Perm>| {
            let mut v: Vec<String> = m.iter().map(|(k, p)| format!("{k}={}", p.name())).collect();
            v.sort();
            v
        };
        serde_json::json!({
            "accessKey": self.access_key,
            "secretKey": "<redacted>",
            "whiteRemoteAddress": self.white.as_ref().map(AddrPattern::as_str),
            "admin": self.admin,
            "defaultTopicPerm": self.default_topic_perm.name(),
            "defaultGroupPerm": self.default_group_perm.name(),
            "topicPerms": perms(&self.topic_perms),
            "groupPerms": perms(&self.group_perms),
        })
    }
}

/// A loaded `plain_acl.yml`.
#[derive(Debug, Clone, Default)]
pub struct PlainAcl {
    pub global_white: Vec<AddrPattern>,
    pub accounts: HashMap<String, Account>,
}

/// Why a request was refused: the remark of the NO_PERMISSION answer. Names the account and
/// the resource, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Denied(pub String);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn text_list(v: Option<&Value>, what: &str) -> Result<Vec<String>, AclFileError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|i| text(i).ok_or_else(|| AclFileError::Invalid(format!("{what}: not text"))))
            .collect(),
        Some(other) => text(other)
            .map(|s| vec![s])
            .ok_or_else(|| AclFileError::Invalid(format!("{what}: not a list"))),
    }
}

fn perm_map(
    items: Vec<String>,
    what: &str,
    key: &str,
) -> Result<HashMap<String, Perm>, AclFileError> {
    let mut m = HashMap::with_capacity(items.len());
    for item in items {
        let (name, perm) = item.split_once('=').ok_or_else(|| {
            AclFileError::Invalid(format!(
                "account {key}: {what} entry {item:?} is not NAME=PERM"
            ))
        })?;
        m.insert(name.trim().to_owned(), Perm::parse(Some(perm)));
    }
    Ok(m)
}

impl PlainAcl {
    /// Parses the file's text.
    pub fn parse(yaml: &str) -> Result<Self, AclFileError> {
        let doc: Value = serde_yaml_ng::from_str(yaml)?;
        let map = match &doc {
            Value::Mapping(m) => m,
            Value::Null => return Ok(PlainAcl::default()),
            _ => return Err(AclFileError::Invalid("the file is not a mapping".into())),
        };
        let mut acl = PlainAcl::default();
        for p in text_list(
            map.get("globalWhiteRemoteAddresses"),
            "globalWhiteRemoteAddresses",
        )? {
            acl.global_white
                .push(AddrPattern::parse(&p).map_err(AclFileError::Invalid)?);
        }
        let accounts = match map.get("accounts") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Sequence(a)) => &a[..],
            Some(_) => return Err(AclFileError::Invalid("accounts: not a list".into())),
        };
        if accounts.len() > MAX_ACCOUNTS {
            return Err(AclFileError::Invalid(format!(
                "more than {MAX_ACCOUNTS} accounts"
            )));
        }
        for (i, a) in accounts.iter().enumerate() {
            let get = |k: &str| a.get(k).and_then(text);
            let key = get("accessKey").filter(|k| !k.is_empty()).ok_or_else(|| {
                AclFileError::Invalid(format!("account #{}: no accessKey", i + 1))
            })?;
            let secret = get("secretKey")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| AclFileError::Invalid(format!("account {key}: no secretKey")))?;
            let white = match get("whiteRemoteAddress") {
                Some(w) if !w.trim().is_empty() => Some(
                    AddrPattern::parse(&w)
                        .map_err(|e| AclFileError::Invalid(format!("account {key}: {e}")))?,
                ),
                _ => None,
            };
            let admin = matches!(a.get("admin"), Some(Value::Bool(true)))
                || get("admin").is_some_and(|s| s.eq_ignore_ascii_case("true"));
            let account = Account {
                white,
                admin,
                default_topic_perm: Perm::parse(get("defaultTopicPerm").as_deref()),
                default_group_perm: Perm::parse(get("defaultGroupPerm").as_deref()),
                topic_perms: perm_map(
                    text_list(a.get("topicPerms"), "topicPerms")?,
                    "topicPerms",
                    &key,
                )?,
                group_perms: perm_map(
                    text_list(a.get("groupPerms"), "groupPerms")?,
                    "groupPerms",
                    &key,
                )?,
                secret_key: secret,
                access_key: key.clone(),
            };
            // Apache: the later of two accounts with one key wins.
            acl.accounts.insert(key, account);
        }
        Ok(acl)
    }

    /// The account named `access_key`.
    pub fn account(&self, access_key: &str) -> Option<&Account> {
        self.accounts.get(access_key)
    }

    /// The credentials of `access_key`, for checking a signature.
    pub fn secret(&self, access_key: &str) -> Option<&str> {
        self.accounts.get(access_key).map(|a| a.secret_key.as_str())
    }

    /// Authenticates `cmd` (from `remote`) and checks its permissions.
    pub fn check(&self, cmd: &RemotingCommand, remote: Option<IpAddr>) -> Result<(), Denied> {
        let account = match self.authenticate(cmd, remote)? {
            Some(a) => a,
            None => return Ok(()),
        };
        let n = needs(cmd).map_err(|e| Denied(format!("cannot check permissions: {e}")))?;
        let key = &account.access_key;
        if n.admin && !account.admin {
            return Err(Denied(format!(
                "Need admin permission for request code={}, but accessKey={key} is not admin",
                cmd.code()
            )));
        }
        if account.admin && account.topic_perms.is_empty() && account.group_perms.is_empty() {
            return Ok(());
        }
        for (resource, perm) in &n.resources {
            if !account.perm(resource).grants(*perm) {
                return Err(Denied(format!(
                    "No {} permission for {resource}, accessKey={key}",
                    perm.name()
                )));
            }
        }
        Ok(())
    }

    /// Who sent `cmd`: `Ok(None)` when a white-listed address lets it pass unchecked, the
    /// account when its signature verifies.
    pub fn authenticate(
        &self,
        cmd: &RemotingCommand,
        remote: Option<IpAddr>,
    ) -> Result<Option<&Account>, Denied> {
        if let Some(ip) = remote {
            if self.global_white.iter().any(|p| p.matches(ip)) {
                return Ok(None);
            }
        }
        let Some(key) = cmd.ext().get(ACCESS_KEY) else {
            return Err(Denied(
                "No accessKey is configured (the request is not signed)".into(),
            ));
        };
        let Some(account) = self.accounts.get(key) else {
            return Err(Denied(format!("No acl config for accessKey={key}")));
        };
        if let (Some(ip), Some(white)) = (remote, &account.white) {
            if white.matches(ip) {
                return Ok(None);
            }
        }
        if !sign::verify(cmd, &account.secret_key) {
            return Err(Denied(format!(
                "Check signature failed for accessKey={key}"
            )));
        }
        Ok(Some(account))
    }

    /// The file as JSON for `/config_dump`, secrets redacted.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut accounts: Vec<&Account> = self.accounts.values().collect();
        accounts.sort_by(|a, b| a.access_key.cmp(&b.access_key));
        serde_json::json!({
            "globalWhiteRemoteAddresses":
                self.global_white.iter().map(AddrPattern::as_str).collect::<Vec<_>>(),
            "accounts": accounts.iter().map(|a| a.redacted_json()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::sign::{sign, Credentials};
    use crate::codec::codes::request_code as rc;

    /// Apache's sample file (distribution `conf/plain_acl.yml`), unchanged in substance.
    const SAMPLE: &str = r#"
globalWhiteRemoteAddresses:
  - 10.10.103.*
  - 192.168.0.*

accounts:
  - accessKey: RocketMQ
    secretKey: 12345678
    whiteRemoteAddress:
    admin: false
    defaultTopicPerm: DENY
    defaultGroupPerm: SUB
    topicPerms:
      - topicA=DENY
      - topicB=PUB|SUB
      - topicC=SUB
    groupPerms:
      # the group should convert to retry topic
      - groupA=DENY
      - groupB=PUB|SUB
      - groupC=SUB

  - accessKey: rocketmq2
    secretKey: 12345678
    whiteRemoteAddress: 192.168.1.*
    # if it is admin, it could access all resources
    admin: true
"#;

    fn signed(code: i32, fields: &[(&str, &str)], ak: &str, sk: &str) -> RemotingCommand {
        let mut r = RemotingCommand::request(code);
        for (k, v) in fields {
            r.ext_mut().insert(k, v);
        }
        sign(
            &mut r,
            &Credentials {
                access_key: ak.into(),
                secret_key: sk.into(),
                security_token: None,
            },
        );
        r
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn apache_sample_loads() {
        let acl = PlainAcl::parse(SAMPLE).unwrap();
        assert_eq!(acl.accounts.len(), 2);
        assert_eq!(acl.secret("RocketMQ"), Some("12345678"));
        let a = acl.account("RocketMQ").unwrap();
        assert_eq!(a.topic_perms["topicB"], Perm(12));
        assert_eq!(a.default_topic_perm, Perm::DENY);
        assert!(acl.account("rocketmq2").unwrap().admin);
        let dump = acl.redacted_json().to_string();
        assert!(
            dump.contains("RocketMQ") && !dump.contains("12345678"),
            "{dump}"
        );
        assert!(!format!("{acl:?}").contains("12345678"));
    }

    #[test]
    fn decisions_follow_apache() {
        let acl = PlainAcl::parse(SAMPLE).unwrap();
        let local = ip("127.0.0.1");
        let send = |t: &str, sk: &str| signed(rc::SEND_MESSAGE, &[("topic", t)], "RocketMQ", sk);
        assert!(acl.check(&send("topicB", "12345678"), local).is_ok());
        let e = acl.check(&send("topicC", "12345678"), local).unwrap_err();
        assert!(
            e.0.contains("topic topicC") && e.0.contains("RocketMQ"),
            "{e}"
        );
        assert!(
            acl.check(&send("other", "12345678"), local).is_err(),
            "default DENY"
        );
        let e = acl.check(&send("topicB", "wrong"), local).unwrap_err();
        assert!(e.0.contains("signature"), "{e}");
        // Unsigned.
        let unsigned = RemotingCommand::request(rc::SEND_MESSAGE);
        assert!(acl.check(&unsigned, local).is_err());
        // ... passes from a globally white-listed address.
        assert!(acl.check(&unsigned, ip("192.168.0.7")).is_ok());
        // Unknown account.
        let e = acl
            .check(
                &signed(rc::SEND_MESSAGE, &[("topic", "topicB")], "nobody", "x"),
                local,
            )
            .unwrap_err();
        assert!(e.0.contains("nobody"), "{e}");
        // Groups: default SUB, groupA denied.
        let pull = |g: &str| {
            signed(
                rc::PULL_MESSAGE,
                &[("consumerGroup", g), ("topic", "topicC")],
                "RocketMQ",
                "12345678",
            )
        };
        assert!(acl.check(&pull("groupC"), local).is_ok());
        assert!(acl.check(&pull("anyGroup"), local).is_ok());
        let e = acl.check(&pull("groupA"), local).unwrap_err();
        assert!(e.0.contains("group groupA"), "{e}");
        // Admin codes.
        let create = |ak: &str| {
            signed(
                rc::UPDATE_AND_CREATE_TOPIC,
                &[("topic", "X")],
                ak,
                "12345678",
            )
        };
        assert!(acl
            .check(&create("RocketMQ"), local)
            .unwrap_err()
            .0
            .contains("admin"));
        assert!(acl.check(&create("rocketmq2"), local).is_ok());
        // The admin may do anything; from its white address without a valid signature too.
        assert!(acl.check(&send("x", "12345678"), local).is_err());
        let admin_send = signed(rc::SEND_MESSAGE, &[("topic", "any")], "rocketmq2", "bad");
        assert!(acl.check(&admin_send, local).is_err());
        assert!(acl.check(&admin_send, ip("192.168.1.9")).is_ok());
    }

    #[test]
    fn bad_files_are_errors() {
        for bad in [
            "accounts: [{secretKey: x}]",
            "accounts: [{accessKey: a}]",
            "accounts: [{accessKey: a, secretKey: b, topicPerms: [nope]}]",
            "globalWhiteRemoteAddresses: [10.0.0]",
            "accounts: 3",
            "- a list",
            "accounts: [",
        ] {
            assert!(PlainAcl::parse(bad).is_err(), "{bad}");
        }
        assert!(PlainAcl::parse("").unwrap().accounts.is_empty());
        assert!(PlainAcl::parse("dataVersion: [{counter: 1}]\naccounts: []").is_ok());
    }
}
