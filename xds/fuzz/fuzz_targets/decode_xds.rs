//! Fuzzes xDS proto -> model: arbitrary bytes as a prost-encoded `DeltaDiscoveryResponse`
//! (applied to a client state as the ADS task applies it, then a snapshot built), `Cluster`,
//! `VirtualHost` or `ClusterLoadAssignment` (the first byte picks). The invariants live in
//! `rocketmesh_xds::fuzzing::check`, which `xds/tests/decode_fuzz.rs` also runs in CI: no panic,
//! the model no larger than the proto, only subscribed topics in the snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rocketmesh_xds::fuzzing::check(data);
});
