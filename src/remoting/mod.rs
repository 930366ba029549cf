//! Remoting over TCP: a bounded server and a multiplexed client, shared by the broker, the
//! control plane, the sidecar and `rocketmesh bench`.

pub mod client;
pub mod server;

pub use client::{ClientError, Completion, RemotingClient};

use bytes::BytesMut;
use rocketmesh_filters::codec::{FrameLimits, RemotingCodec, RemotingCommand};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

/// Read buffer of a connection: under load one `recv` takes many frames (tokio-util's default,
/// 8 KiB, holds five 1 KiB messages). Grown past this only for a frame that needs it.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// Largest batch of queued frames written with one `write_all`.
const WRITE_BATCH: usize = 256 * 1024;

/// Writes queued commands until the queue closes or `closed` fires: everything already queued
/// is encoded into one buffer and written at once (one syscall for a burst of responses).
/// Returns why it stopped when a write failed; cancels `closed` then.
pub(crate) async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<RemotingCommand>,
    limits: FrameLimits,
    closed: CancellationToken,
) -> Option<std::io::Error> {
    let mut codec = RemotingCodec::new(limits);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut failure = None;
    let mut stop = std::pin::pin!(closed.cancelled());
    loop {
        // Queued frames first: a connection closing after its last requests were answered
        // (e.g. the peer half-closed) must still write those answers.
        let first = tokio::select! {
            biased;
            c = queue.recv() => c,
            () = &mut stop => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut yielded = false;
        loop {
            while let Some(cmd) = next {
                if let Err(e) = codec.encode(&cmd, &mut buf) {
                    tracing::warn!("dropping a command that cannot be encoded: {e}");
                }
                next = if buf.len() < WRITE_BATCH {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            // Under load, frames for this connection are usually being produced by tasks that
            // are ready to run: give them one turn so their frames share this write (one
            // syscall for many frames) instead of each costing its own.
            if yielded || buf.len() >= WRITE_BATCH {
                break;
            }
            yielded = true;
            tokio::task::yield_now().await;
            next = queue.try_recv().ok();
            if next.is_none() {
                break;
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            failure = Some(e);
            closed.cancel();
            break;
        }
        buf.clear();
    }
    let _ = write.shutdown().await;
    failure
}
pub use server::{serve, serve_until, Connection, Handler, RequestSlot, ServerConfig};

#[cfg(test)]
mod tests;
