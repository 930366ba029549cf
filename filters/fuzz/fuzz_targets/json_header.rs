//! Fuzzes the JSON header readers against each other: whatever the single-pass reader accepts,
//! serde accepts and reads the same (fields, the opaque's byte span, the deferred `extFields`
//! reading); whatever the codec accepts re-encodes and reads back the same. The checks live in
//! `rocketmesh_filters::fuzzing::check_json_header`, which `filters/tests/json_header.rs` also
//! runs over seeded mutations in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocketmesh_filters::fuzzing::check_json_header;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_json_header(data) {
        panic!("{e}");
    }
});
