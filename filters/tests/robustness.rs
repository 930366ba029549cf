//! Hostile input: truncated, oversized, garbage-length, mutated and random frames.
//!
//! Every input must end in a clean result: `Ok(None)` (need more bytes, nothing consumed),
//! `Ok(Some(_))` (one whole frame consumed), or an error. Never a panic, never a loop, and never
//! more memory than the frame limit: a counting global allocator (test-only) measures the peak.

// The counting allocator below implements `GlobalAlloc`, an unsafe trait, forwarding every call
// to the system allocator unchanged; no other unsafe code exists in the workspace.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use bytes::BytesMut;
use proptest::prelude::*;
use rocketmesh_filters::codec::codes::request_code;
use rocketmesh_filters::codec::frame::encode_to_bytes;
use rocketmesh_filters::codec::{CodecError, FrameLimits, RemotingCodec, SerializeType};
use tokio_util::codec::Decoder;

/// Counts the heap bytes the measuring thread allocates and their peak while it measures. The
/// counters are per thread: the harness runs other tests on other threads at the same time, and
/// their allocations must not count. The only `unsafe` here forwards to the system allocator
/// unchanged.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // try_with: the allocator also runs while a thread's locals are being torn down.
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the peak of live heap bytes it allocated on this thread while it ran.
fn peak_during(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    PEAK.with(|p| p.get()).max(0) as usize
}

const SMALL: usize = 64 * 1024;

fn small_limits() -> FrameLimits {
    FrameLimits::new(SMALL, 16 * 1024).unwrap()
}

/// Feeds `input` to a fresh codec the way a connection would, in chunks, and checks the
/// invariants. Returns how many commands decoded.
fn drive(input: &[u8], chunk: usize, limits: FrameLimits) -> usize {
    let mut codec = RemotingCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut decoded = 0;
    let mut fed = 0;
    // Every loop iteration either feeds bytes, consumes a frame, or stops: bounded by the input.
    for _ in 0..(input.len() * 2 + 4) {
        let before = buf.clone();
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => {
                decoded += 1;
                assert!(buf.len() < before.len(), "a decoded frame consumes bytes");
                // encode(decode(x)) decodes to the same command
                let again = encode_to_bytes(&cmd).expect("re-encodes");
                let back = RemotingCodec::new(limits)
                    .decode(&mut BytesMut::from(&again[..]))
                    .expect("re-decodes")
                    .expect("whole frame");
                let mut expected = cmd.clone();
                if !request_code::fits_binary(cmd.code()) {
                    // a code outside int16 is always re-encoded as JSON
                    expected.set_serialize_type(SerializeType::Json);
                }
                assert_eq!(back, expected);
                // and encoding is stable from there on
                assert_eq!(encode_to_bytes(&back).expect("re-encodes"), again);
            }
            Ok(None) => {
                assert_eq!(buf, before, "partial input is left untouched");
                if fed == input.len() {
                    return decoded;
                }
                let end = (fed + chunk).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Err(e) if e.is_fatal() => {
                assert_eq!(buf, before, "a fatal error consumes nothing");
                return decoded;
            }
            Err(e) => {
                assert!(matches!(e, CodecError::MalformedHeader { .. }), "{e}");
                assert!(buf.len() < before.len(), "a malformed frame is consumed");
            }
        }
    }
    panic!("decoder did not settle: loop bound reached");
}

fn frame(kind: u8, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(&((u32::from(kind) << 24) | header.len() as u32).to_be_bytes());
    v.extend_from_slice(header);
    v.extend_from_slice(body);
    v
}

fn golden_frames() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frames");
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "hex") {
                out.push(hex::decode(std::fs::read_to_string(&p).unwrap().trim()).unwrap());
            }
        }
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn truncated_frames_wait_without_consuming() {
    for bytes in golden_frames() {
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let r = RemotingCodec::default().decode(&mut buf);
            assert!(matches!(r, Ok(None)), "cut {cut}: {r:?}");
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }
}

#[test]
fn garbage_lengths_are_refused_cleanly() {
    let limits = small_limits();
    let lengths: [u32; 12] = [
        0,
        1,
        3,
        4,
        5,
        (SMALL - 4) as u32,
        (SMALL - 3) as u32,
        SMALL as u32,
        0x00FF_FFFF,
        0x7FFF_FFFF,
        0x8000_0000,
        u32::MAX,
    ];
    for len in lengths {
        for word in [
            0u32,
            1,
            0x0100_0000,
            0x00FF_FFFF,
            0x01FF_FFFF,
            0xFF00_0000,
            0x0000_0004,
        ] {
            let mut input = Vec::new();
            input.extend_from_slice(&len.to_be_bytes());
            input.extend_from_slice(&word.to_be_bytes());
            input.extend_from_slice(&[0u8; 64]);
            let peak = peak_during(|| {
                drive(&input, 7, limits);
            });
            assert!(peak < 2 * SMALL, "len {len:#x} word {word:#x}: peak {peak}");
        }
    }
}

#[test]
fn oversized_frames_are_refused_before_allocating() {
    // Announce 16 MiB + 1 to a default codec: refused from the prefix alone.
    let mut input = ((16 * 1024 * 1024 - 4 + 1) as u32).to_be_bytes().to_vec();
    input.extend_from_slice(&0u32.to_be_bytes());
    let mut err = None;
    let peak = peak_during(|| {
        let mut buf = BytesMut::from(&input[..]);
        err = Some(RemotingCodec::default().decode(&mut buf));
    });
    assert!(
        matches!(err, Some(Err(CodecError::FrameTooLarge { .. }))),
        "{err:?}"
    );
    assert!(peak < 4096, "peak {peak}");

    // A frame announced at exactly the limit but sent only in part holds memory for what was
    // sent (reserved in 64 KiB steps), not for what was announced.
    let limit = FrameLimits::default().max_frame();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&((limit - 4) as u32).to_be_bytes());
    buf.extend_from_slice(&((1u32 << 24) | 21).to_be_bytes());
    let mut codec = RemotingCodec::default();
    let peak = peak_during(|| {
        for _ in 0..4 {
            assert!(codec.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(&[0u8; 1000]);
        }
    });
    assert!(peak < 256 * 1024, "peak {peak} for 4 KB received");
}

#[test]
fn malformed_headers_inside_valid_frames_are_recoverable() {
    let cases: Vec<Vec<u8>> = vec![
        frame(0, b"", b""),
        frame(0, b"{", b""),
        frame(0, b"not json", b"body"),
        frame(0, br#"{"code":"ten"}"#, b""),
        frame(0, br#"{"code":1,"extFields":[1,2]}"#, b""),
        frame(0, &[0xff, 0xfe, 0xfd], b""),
        frame(1, b"", b""),
        frame(1, &[0; 20], b""),
        frame(
            1,
            &[
                0, 10, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
            ],
            b"",
        ),
        frame(
            1,
            &[
                0, 10, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0,
            ],
            b"",
        ),
    ];
    let good = frame(0, br#"{"code":34,"opaque":99}"#, b"");
    for bad in cases {
        let mut input = bad.clone();
        input.extend_from_slice(&good);
        let mut buf = BytesMut::from(&input[..]);
        let mut codec = RemotingCodec::default();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(!err.is_fatal(), "{err}");
        assert!(!err.to_string().is_empty());
        let next = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(next.opaque(), 99, "stream still in sync after {err}");
    }
}

#[test]
fn deep_json_nesting_is_bounded() {
    // serde_json stops at depth 128: a deeply nested ext value is an error, not a stack overflow.
    let mut header = br#"{"code":1,"extFields":{"a":"#.to_vec();
    header.extend(std::iter::repeat_n(b'[', 100_000));
    header.extend(std::iter::repeat_n(b']', 100_000));
    header.extend_from_slice(b"}}");
    let input = frame(0, &header, b"");
    let mut buf = BytesMut::from(&input[..]);
    let err = RemotingCodec::default().decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::MalformedHeader { .. }), "{err}");
}

#[test]
fn many_ext_fields_are_capped() {
    let mut header = br#"{"code":1,"extFields":{"#.to_vec();
    for i in 0..5000 {
        if i > 0 {
            header.push(b',');
        }
        header.extend_from_slice(format!("\"k{i}\":\"v\"").as_bytes());
    }
    header.extend_from_slice(b"}}");
    let input = frame(0, &header, b"");
    let mut buf = BytesMut::from(&input[..]);
    let err = RemotingCodec::default().decode(&mut buf).unwrap_err();
    assert!(err.to_string().contains("extFields"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        drive(&input, chunk, small_limits());
    }

    #[test]
    fn random_frames_with_valid_lengths(kind in 0u8..3, header in proptest::collection::vec(any::<u8>(), 0..512),
                                        body in proptest::collection::vec(any::<u8>(), 0..128), chunk in 1usize..600) {
        let mut input = frame(kind, &header, &body);
        input.extend_from_slice(&frame(0, br#"{"code":0}"#, b""));
        drive(&input, chunk, small_limits());
    }

    #[test]
    fn mutated_real_frames(pick in any::<prop::sample::Index>(),
                           flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                           chunk in 1usize..300) {
        let frames = golden_frames();
        let mut input = frames[pick.index(frames.len())].clone();
        for (at, byte) in flips {
            let i = at.index(input.len());
            input[i] = byte;
        }
        let peak = peak_during(|| { drive(&input, chunk, small_limits()); });
        prop_assert!(peak < 8 * SMALL, "peak {}", peak);
    }
}

#[test]
fn the_counter_sees_this_threads_allocations() {
    let peak = peak_during(|| {
        let v = vec![0u8; 100_000];
        std::hint::black_box(&v);
    });
    assert!((100_000..200_000).contains(&peak), "peak {peak}");
}
