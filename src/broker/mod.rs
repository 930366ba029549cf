//! The bundled broker node (`docs/design.md` section 5).
//!
//! * [`store`]: the durable message store (commit log, consume queues, consumer offsets and pop
//!   checkpoints) the broker's request processors build on.

#![warn(missing_docs)]

pub mod store;
