//! The Remoting wire protocol.
//!
//! Layers, bottom up:
//! * [`frame`]: the outer frame (`u32 length | u32 serialize<<24|headerLen | header | body`), limits
//!   checked from the first 8 bytes before anything is allocated; [`frame::FrameCodec`] and
//!   [`frame::RemotingCodec`] are `tokio_util::codec` decoders/encoders.
//! * [`command`]: [`command::RemotingCommand`], with the JSON ([`json`]) and ROCKETMQ binary
//!   ([`binary`]) header encodings.
//! * [`ext`]: the custom header map and the [`ext::CommandHeader`] trait implemented by every typed
//!   header in [`headers`].
//! * [`body`]: JSON bodies (heartbeat, route data, broker registration, batch ack, ...).
//! * [`message`]: message records (stored layout, properties, batches, compression, ids).
//! * [`pop`]: the pop handle (`extraInfo` / `POP_CK`) and pop response offset info.

pub mod binary;
pub mod body;
pub mod codes;
pub mod command;
pub mod ext;
pub mod frame;
pub mod headers;
pub mod json;
pub(crate) mod json_fast;
pub mod message;
pub mod pop;

pub use codes::{request_code, response_code, LanguageCode, SerializeType};
pub use command::{RemotingCommand, ResponseEncoding};
pub use ext::{CommandHeader, ExtFields, HeaderError};
pub use frame::{CodecError, FrameCodec, FrameLimits, RawFrame, RemotingCodec};
