//! Fuzzes the Remoting decoder with invariants, not just "does not panic":
//! * partial input is left untouched (`Ok(None)` consumes nothing);
//! * a successful decode consumes exactly one frame: the announced length plus 4;
//! * a fatal error consumes nothing; a malformed header consumes exactly its frame;
//! * the buffer never grows past the frame limit;
//! * encode(decode(x)) decodes to the same command and re-encodes to the same bytes.
//!
//! The input is fed in two chunks (the first byte picks the split) to exercise partial reads.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rocketmesh_filters::codec::codes::request_code;
use rocketmesh_filters::codec::frame::encode_to_bytes;
use rocketmesh_filters::codec::{FrameLimits, RemotingCodec, SerializeType};
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let limits = FrameLimits::new(MAX_FRAME, 64 * 1024).unwrap();
    let mut codec = RemotingCodec::new(limits);
    let split = usize::from(split).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut fed = split;
    for _ in 0..(data.len() + 3) {
        let before = buf.clone();
        let announced = (before.len() >= 4)
            .then(|| u32::from_be_bytes([before[0], before[1], before[2], before[3]]) as usize + 4);
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => {
                assert_eq!(before.len() - buf.len(), announced.unwrap(), "one frame consumed");
                let once = encode_to_bytes(&cmd).expect("encodes");
                let back = RemotingCodec::new(limits)
                    .decode(&mut BytesMut::from(&once[..]))
                    .expect("re-decodes")
                    .expect("whole frame");
                let mut expected = cmd.clone();
                if !request_code::fits_binary(cmd.code()) {
                    expected.set_serialize_type(SerializeType::Json);
                }
                assert_eq!(back, expected);
                assert_eq!(encode_to_bytes(&back).expect("encodes"), once, "stable");
            }
            Ok(None) => {
                assert_eq!(buf, before, "partial input untouched");
                assert!(buf.capacity() <= MAX_FRAME + 64 * 1024 + data.len());
                if fed == data.len() {
                    return;
                }
                buf.extend_from_slice(&data[fed..]);
                fed = data.len();
            }
            Err(e) if e.is_fatal() => {
                assert_eq!(buf, before, "fatal error consumes nothing");
                return;
            }
            Err(_) => {
                assert_eq!(before.len() - buf.len(), announced.unwrap(), "bad frame consumed");
            }
        }
    }
    panic!("decoder did not settle");
});
