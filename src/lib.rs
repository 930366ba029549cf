//! The `rocketmesh` package: process wiring for the sidecar, the bundled broker node and the
//! control plane. The binary (`src/main.rs`) is a thin CLI over this library, so integration
//! tests can start the same components in-process.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
mod bench_connect;
pub mod bench_xds;
pub mod broker_node;
pub mod cli;
pub mod cli_tls;
pub mod control_plane;
pub mod ctl;
pub mod demo;
pub mod inject;
pub mod inspect;
pub mod iptables;
pub mod metrics;
pub mod sdk;
pub mod sidecar;

/// The bundled broker node lives in its own crate; re-exported so `rocketmesh::broker` reads as before.
pub use rocketmesh_broker as broker;
/// Remoting over TCP (server, client, gates) lives in its own crate.
pub use rocketmesh_remoting as remoting;
