//! The checks behind the fuzz targets in `filters/fuzz` (`json_header`, `translator`), public so
//! that seeded CI twins (`filters/tests/json_header.rs`, `filters/tests/properties.rs`) run the
//! same oracle without cargo-fuzz. Each returns a description of the first broken invariant.

use bytes::BytesMut;

use crate::codec::json;
use crate::consume::testing::{Event, Harness};

/// A JSON header, read every way the codec reads one:
/// * the single-pass reader agrees with serde on whatever it accepts (fields, the opaque's byte
///   span, and the deferred `extFields` reading);
/// * a header the codec accepts (fast path or serde fallback) re-encodes to a header that
///   decodes to the same fields, with a patchable opaque, and re-encodes to the same bytes.
///
/// `Ok(true)` when the fast path read it, `Ok(false)` when it fell back or the header was refused.
pub fn check_json_header(bytes: &[u8]) -> Result<bool, String> {
    let fast = crate::codec::json_fast::check_against_serde(bytes)?;
    if let Ok((fields, _)) = json::decode(bytes) {
        let mut once = BytesMut::new();
        json::encode(&fields, &mut once);
        let (back, span) = json::decode(&once).map_err(|e| {
            format!(
                "re-encoded header refused ({e}): {}",
                String::from_utf8_lossy(&once)
            )
        })?;
        if back != fields {
            return Err(format!(
                "re-encoded header reads back as {back:?}, not {fields:?}"
            ));
        }
        // Our encoding writes one top-level opaque, a plain number: it can be patched in place
        // unless an `extFields` key of the same name makes the bytes ambiguous.
        if span.is_none() && !back.ext.contains("opaque") {
            return Err(format!(
                "no opaque span in our own encoding: {}",
                String::from_utf8_lossy(&once)
            ));
        }
        let mut twice = BytesMut::new();
        json::encode(&back, &mut twice);
        if once != twice {
            return Err("encoding is not stable".into());
        }
    }
    Ok(fast)
}

/// The Pull -> Pop translator driven by the event sequence `bytes` encodes
/// ([`Event::parse_all`]), checked after every step by [`Harness`]: a message is acked at most
/// once, only once committed, never after its queue was forgotten, and the tables stay bounded.
pub fn check_translator(bytes: &[u8]) -> Result<(), String> {
    let events = Event::parse_all(bytes);
    Harness::default()
        .run(&events)
        .map_err(|e| format!("{e}\nevents: {events:?}"))
}
