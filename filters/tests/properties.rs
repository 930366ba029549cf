//! Property tests of the Pull -> Pop translator: random sequences of pulls, pop results, offset
//! commits (rewinds included), ack outcomes, clock advances and renewals, send-backs and
//! connection closes, checked after every step by `consume::testing::Harness`: a message is
//! acked at most once, only once committed, never after the translator forgot it, and the
//! tables stay within their bounds.

use proptest::prelude::*;
use rocketmesh_filters::consume::testing::{Event, Harness};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn translator_keeps_its_invariants(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let events = Event::parse_all(&data);
        let mut h = Harness::default();
        if let Err(e) = h.run(&events) {
            return Err(TestCaseError::fail(format!("{e}\nevents: {events:?}")));
        }
    }
}
