//! The `json_header` fuzz target's check (`rocketmesh_filters::fuzzing::check_json_header`, also
//! run by `filters/fuzz`) over tens of thousands of inputs, so CI compares the single-pass JSON
//! reader with serde without cargo-fuzz: every JSON header captured from the C++ SDK, and those
//! headers with bytes flipped, replaced by JSON punctuation, inserted, cut, and spliced together.
//! Seeded, so a failure reproduces.

use std::path::{Path, PathBuf};

use rocketmesh_filters::fuzzing::check_json_header;

/// The JSON headers of every captured frame under `testdata/frames/`.
fn captured_headers() -> Vec<Vec<u8>> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/frames")];
    let mut out = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "hex") {
                if let Some(h) = json_header(&p) {
                    out.push(h);
                }
            }
        }
    }
    out.sort();
    out
}

fn json_header(p: &Path) -> Option<Vec<u8>> {
    let frame = hex::decode(std::fs::read_to_string(p).ok()?.trim()).ok()?;
    if frame.len() < 8 || frame[4] != 0 {
        return None; // binary header
    }
    let len = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
    frame.get(8..8 + len).map(<[u8]>::to_vec)
}

/// xorshift64*: a few lines instead of a dependency, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes a mutation writes: JSON's punctuation and escapes, digits, and a few that no header
/// should hold (a NUL, a lone UTF-8 continuation byte, a 4-byte lead).
const ALPHABET: &[u8] = b"{}[]:,\"\\/ \t\n0123456789-+.eEtrufalsnbu\x00\x01\x80\xf0abcAZ";

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            2 => out.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            3 => out.truncate(at),
            4 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
        }
    }
    out
}

#[test]
fn fast_reader_agrees_with_serde_on_mutated_captured_headers() {
    let seeds = captured_headers();
    assert!(
        seeds.len() >= 30,
        "only {} captured JSON headers",
        seeds.len()
    );
    for s in &seeds {
        assert_eq!(
            check_json_header(s),
            Ok(true),
            "a captured header must take the fast path: {}",
            String::from_utf8_lossy(s)
        );
    }
    let mut rng = Rng(0x6a73_6f6e_5f66_6173);
    let (mut fast, mut fallback) = (0u32, 0u32);
    for i in 0..40_000 {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, &seeds, base);
        match check_json_header(&input) {
            Ok(true) => fast += 1,
            Ok(false) => fallback += 1,
            Err(e) => panic!("input {i}: {e}"),
        }
    }
    // Both sides of the comparison were exercised: mutated headers the fast path still read,
    // and ones it handed to serde (or both refused).
    assert!(
        fast > 5_000 && fallback > 5_000,
        "fast {fast}, fallback {fallback}"
    );
}

#[test]
fn random_bytes_are_refused_or_agree() {
    let mut rng = Rng(0x7261_6e64);
    for i in 0..20_000 {
        let len = rng.below(96);
        let input: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
        if let Err(e) = check_json_header(&input) {
            panic!("input {i}: {e}");
        }
    }
}
