//! Access control, sans-IO: Apache RocketMQ's request signature ([`sign`]), its `plain_acl.yml`
//! accounts and decision ([`plain`], [`addr`]), which resources a request needs ([`resource`]),
//! and the sidecar's topic authorization policy ([`authz`]).
//!
//! Files are parsed from text here; reading and reloading them is the embedding process's job.

pub mod addr;
pub mod authz;
pub mod plain;
pub mod resource;
pub mod sign;

pub use authz::{AuthzDenied, DenyReason, Policy};
pub use plain::{Denied, PlainAcl};
pub use sign::{sign, verify, Credentials};
