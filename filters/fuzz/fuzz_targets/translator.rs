//! Fuzzes the Pull -> Pop translator with event sequences (pulls, pop results, commits and
//! rewinds, ack/renewal/send-back outcomes, clock steps, connection closes) decoded from the
//! input by `consume::testing::Event::parse_all`. After every step the harness checks that a
//! message is acked at most once, only once committed, never after its queue was forgotten, and
//! that the tables stay bounded. `filters/tests/properties.rs` runs the same check in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocketmesh_filters::fuzzing::check_translator;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_translator(data) {
        panic!("{e}");
    }
});
