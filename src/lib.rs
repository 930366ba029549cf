//! The `rocketmesh` package: process wiring for the sidecar, the bundled broker node and the
//! control plane. The binary (`src/main.rs`) is a thin CLI over this library, so integration
//! tests can start the same components in-process.

pub mod admin;
pub mod bench;
pub mod bench_xds;
pub mod broker;
pub mod cli;
pub mod control_plane;
pub mod demo;
pub mod inspect;
pub mod metrics;
pub mod remoting;
pub mod sdk;
pub mod sidecar;
