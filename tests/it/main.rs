//! rocketmesh's integration tests, in one binary (one link, one place for shared machinery):
//! every module talks over loopback sockets to real components — in-process control plane,
//! broker nodes and sidecars, the `rocketmesh` binary as a child process, and the real Apache
//! RocketMQ C++ SDK (PyPI `rocketmq==0.4.4`) for the interop modules. `support` holds what they
//! share. Run one module with `cargo test --test it sidecar::`.

mod support;

mod acl;
mod admin;
mod broker_pop;
mod broker_protocol;
mod control_plane;
mod dashboard;
mod demo;
mod drain;
mod interop_cp_restart;
mod interop_cpp;
mod interop_orderly;
mod interop_pull_pop;
mod interop_semantics;
mod interop_sidecar;
mod interop_tools;
mod iptables;
mod k8s;
mod lifecycle;
mod pod;
mod sidecar;
mod tls;
mod traffic;
mod xds_client;
