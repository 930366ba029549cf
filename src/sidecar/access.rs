//! Access control at the sidecar, before anything reaches a broker:
//!
//! * `--verify-client-signatures FILE` (Apache `plain_acl.yml`): the application's own
//!   signature is checked over the request as received (before any rewrite), then the
//!   account's permissions, exactly as a broker with that file would; so a legacy application's
//!   credentials still mean something behind the mesh.
//! * `--authz FILE` ([`rocketmesh_filters::acl::authz`]): which topics this workload may produce
//!   to and consume from and which groups it may use.
//!
//! Both are reloaded when their file changes (a bad edit keeps the last good version). A refused
//! request is answered NO_PERMISSION by the sidecar and counted (`client_auth_denied`,
//! `authz_denied{reason}`). `--credentials FILE` (the keys the sidecar signs upstream requests
//! with, in [`super::upstream`]) is read here too, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rocketmesh_filters::acl::{Credentials, DenyReason, PlainAcl, Policy};
use rocketmesh_filters::codec::codes::response_code;
use rocketmesh_filters::codec::RemotingCommand;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::metrics::Counter;
use crate::remoting::reload::{ReloadError, Reloading};
use crate::remoting::{Connection, Drain};

/// Access settings of a sidecar.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// YAML `accessKey`, `secretKey`, optional `securityToken`: upstream requests are signed.
    pub credentials: Option<PathBuf>,
    /// `plain_acl.yml` the applications' own signatures and permissions are checked against.
    pub verify_client_signatures: Option<PathBuf>,
    /// Topic / group authorization policy.
    pub authz: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            credentials: None,
            verify_client_signatures: None,
            authz: None,
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// A file the access settings name cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    File(#[from] ReloadError),
    #[error("credentials {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CredentialsFile {
    access_key: String,
    secret_key: String,
    #[serde(default)]
    security_token: Option<String>,
}

/// Reads a `--credentials` file.
pub fn load_credentials(path: &Path) -> Result<Credentials, AccessError> {
    let err = |reason: String| AccessError::Credentials {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    // serde_yaml_ng's error quotes no value of the document, so no secret reaches the log.
    let f: CredentialsFile = serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?;
    if f.access_key.is_empty() || f.secret_key.is_empty() {
        return Err(err("accessKey and secretKey must not be empty".into()));
    }
    Ok(Credentials {
        access_key: f.access_key,
        secret_key: f.secret_key,
        security_token: f.security_token.filter(|t| !t.is_empty()),
    })
}

/// The loaded access settings.
#[derive(Debug, Default)]
pub struct Access {
    /// The keys upstream requests are signed with (the upstream pools hold a copy).
    pub credentials: Option<Credentials>,
    verify: Option<Arc<Reloading<PlainAcl>>>,
    authz: Option<Arc<Reloading<Policy>>>,
    reload_interval: Duration,
}

fn parse_acl(text: &str) -> Result<PlainAcl, String> {
    PlainAcl::parse(text).map_err(|e| e.to_string())
}

fn parse_policy(text: &str) -> Result<Policy, String> {
    Policy::parse(text).map_err(|e| e.to_string())
}

impl Access {
    /// Loads every file `cfg` names (each must be usable).
    pub fn load(cfg: &AccessConfig) -> Result<Self, AccessError> {
        Ok(Access {
            credentials: cfg
                .credentials
                .as_deref()
                .map(load_credentials)
                .transpose()?,
            verify: cfg
                .verify_client_signatures
                .as_deref()
                .map(|p| Reloading::load(p, "client accounts file", parse_acl))
                .transpose()?,
            authz: cfg
                .authz
                .as_deref()
                .map(|p| Reloading::load(p, "authz policy", parse_policy))
                .transpose()?,
            reload_interval: cfg.reload_interval,
        })
    }

    /// Starts the reload loops on `drain`.
    pub fn spawn_reloads(&self, drain: &Drain) {
        let stop: CancellationToken = drain.draining_token();
        if let Some(v) = &self.verify {
            drain.spawn(v.clone().run(self.reload_interval, stop.clone()));
        }
        if let Some(a) = &self.authz {
            drain.spawn(a.clone().run(self.reload_interval, stop));
        }
    }

    /// Whether the application's `req` may go on: `Err` carries the counter to bump and the
    /// remark of the refusal. Counts nothing (the inline send path asks first and hands a
    /// refused request to the dispatch path, which answers it through [`Access::check`]).
    pub fn decide(
        &self,
        req: &RemotingCommand,
        peer: std::net::SocketAddr,
    ) -> Result<(), (Counter, String)> {
        if let Some(v) = &self.verify {
            if let Err(denied) = v.current().check(req, Some(peer.ip())) {
                return Err((Counter::ClientAuthDenied, format!("rocketmesh: {denied}")));
            }
        }
        if let Some(a) = &self.authz {
            if let Err(denied) = a.current().check(req) {
                let counter = match denied.reason {
                    DenyReason::Produce => Counter::AuthzDeniedProduce,
                    DenyReason::Consume => Counter::AuthzDeniedConsume,
                    DenyReason::Group => Counter::AuthzDeniedGroup,
                    DenyReason::Unreadable => Counter::AuthzDeniedUnreadable,
                };
                return Err((counter, denied.remark));
            }
        }
        Ok(())
    }

    /// None when the application's request may go on; else the sidecar's NO_PERMISSION answer
    /// (counted, logged at debug).
    pub fn check(
        &self,
        ctx: &Context,
        req: &RemotingCommand,
        conn: &Connection,
    ) -> Option<RemotingCommand> {
        let (counter, remark) = self.decide(req, conn.peer()).err()?;
        ctx.stats.inc(counter);
        tracing::debug!(peer = %conn.peer(), code = req.code(), "refused: {remark}");
        Some(ctx.reply(req, response_code::NO_PERMISSION, Some(remark)))
    }

    /// `/config_dump`: the access key and the policies, never a secret.
    pub fn dump(&self) -> serde_json::Value {
        let reloaded = |r: &dyn Fn() -> (u64, u64, String)| {
            let (ok, failed, path) = r();
            serde_json::json!({"file": path, "reloads": ok, "failed_reloads": failed})
        };
        serde_json::json!({
            "credentials": self.credentials.as_ref().map(|c| serde_json::json!({
                "accessKey": c.access_key,
                "secretKey": "<redacted>",
                "securityToken": c.security_token.as_ref().map(|_| "<redacted>"),
            })),
            "verify_client_signatures": self.verify.as_ref().map(|v| serde_json::json!({
                "source": reloaded(&|| (v.reloads(), v.failures(), v.path().display().to_string())),
                "accounts": v.current().redacted_json(),
            })),
            "authz": self.authz.as_ref().map(|a| serde_json::json!({
                "source": reloaded(&|| (a.reloads(), a.failures(), a.path().display().to_string())),
                "policy": serde_json::to_value(&*a.current()).unwrap_or_default(),
            })),
        })
    }
}
