//! `rocketmesh-filters`: the RocketMQ Remoting protocol and the sans-IO filter logic of rocketmesh.
//!
//! This crate holds no sockets and no runtime: it turns bytes into typed commands and decisions,
//! and decisions back into bytes, so that every part of it can be unit-tested and fuzzed.
//!
//! * [`acl`]: request signatures (Apache's HmacSHA1 scheme), `plain_acl.yml` accounts and
//!   permissions, and the sidecar's topic authorization policy.
//! * [`codec`]: frames, JSON and ROCKETMQ binary headers, typed custom headers, JSON bodies,
//!   message records and pop handles.
//! * [`consume`]: the Pull -> Pop translator (virtual offsets, commits -> acks, send-back ->
//!   change invisible time, renewals), as a sans-IO state machine.
//! * [`route`]: the queue view the sidecar presents for a topic (one virtual broker) and the
//!   mapping of virtual queue ids back to real brokers.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod acl;
pub mod clock;
pub mod codec;
pub mod consume;
#[doc(hidden)]
pub mod fuzzing;
pub mod route;
