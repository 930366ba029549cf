//! Remoting over TCP: a bounded server and a multiplexed client, shared by the broker, the
//! control plane, the sidecar and `rocketmesh bench`.
#![forbid(unsafe_code)]

pub mod advertise;
pub mod client;
mod connection;
pub mod drain;
mod gate;
mod log_budget;
pub mod reload;
pub mod server;
pub mod tls;

pub use client::{ClientError, Completion, RemotingClient};
pub use drain::Drain;

use bytes::{Buf, Bytes, BytesMut};
use rocketmesh_filters::codec::{FrameLimits, RemotingCodec, RemotingCommand};
use tls::WriteHalf;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Read buffer of a connection: under load one `recv` takes many frames (tokio-util's default,
/// 8 KiB, holds five 1 KiB messages). Grown past this only for a frame that needs it.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// A connection's write buffer grows with what its bursts need; past four times this it is
/// given back once the burst is written (a burst of small answers stays below).
const WRITE_BUFFER_KEPT: usize = 4 * 1024;

/// Largest batch of queued frames written with one `write_all`.
const WRITE_BATCH: usize = 256 * 1024;

/// Bodies from this size on are not copied into the write buffer: they are written from their
/// own buffers with a vectored write (a pull answer's records, a large message). Smaller ones
/// are cheaper to copy than to give a piece of their own (measured with 1 KiB sends).
const BODY_APART: usize = 8 * 1024;

/// Most pieces handed to one vectored write (the kernel's limit is 1024).
const MAX_IOVECS: usize = 64;

/// What one flush writes: encoded frame bytes and bodies kept apart, in order.
#[derive(Default)]
struct Batch {
    /// Frame bytes not yet cut into `pieces`.
    buf: BytesMut,
    pieces: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, codec: &mut RemotingCodec, cmd: &RemotingCommand) {
        let before = self.buf.len();
        match codec.encode_body_apart(cmd, &mut self.buf, BODY_APART) {
            Ok(apart) => {
                self.len += self.buf.len() - before;
                if let Some(body) = apart {
                    self.len += body.len();
                    self.pieces.push(self.buf.split().freeze());
                    self.pieces.push(body);
                }
            }
            Err(e) => tracing::warn!("dropping a command that cannot be encoded: {e}"),
        }
    }

    /// Writes everything, in order (one `write` when nothing was kept apart).
    async fn write_to(&mut self, write: &mut WriteHalf) -> std::io::Result<()> {
        if self.pieces.is_empty() {
            write.write_all(&self.buf).await?;
            self.buf.clear();
            self.len = 0;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.pieces.push(self.buf.split().freeze());
        }
        let mut at = 0;
        while at < self.pieces.len() {
            let slices: Vec<std::io::IoSlice<'_>> = self.pieces[at..]
                .iter()
                .take(MAX_IOVECS)
                .map(|p| std::io::IoSlice::new(p))
                .collect();
            let mut n = write.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            // Past what was written, empty pieces included (the kernel reports at most what
            // it was given, so `n` runs out within the pieces).
            while let Some(piece) = self.pieces.get_mut(at) {
                if n < piece.len() {
                    piece.advance(n);
                    break;
                }
                n -= piece.len();
                at += 1;
            }
        }
        self.pieces.clear();
        self.buf.clear();
        self.len = 0;
        Ok(())
    }
}

/// Writes queued commands until the queue closes or `closed` fires: everything already queued
/// is written at once (one syscall for a burst of responses), headers and small bodies copied
/// into one buffer, large bodies written from their own buffers (a vectored write).
/// Returns why it stopped when a write failed; cancels `closed` then.
///
/// The queue holds commands or boxes of them (`C`): a server connection's queue is of boxes,
/// since tokio's channel allocates its first block of 32 slots up front and 32 commands inline
/// would make every idle connection hold 6.5 KiB (boxed: 256 bytes).
pub(crate) async fn write_loop<C: std::borrow::Borrow<RemotingCommand>>(
    mut write: WriteHalf,
    mut queue: mpsc::Receiver<C>,
    limits: FrameLimits,
    closed: CancellationToken,
) -> Option<std::io::Error> {
    let mut codec = RemotingCodec::new(limits);
    // Grown by what bursts need, and given back after a large one: an idle connection should
    // not hold a large buffer.
    let mut batch = Batch::default();
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
                batch.push(&mut codec, cmd.borrow());
                next = if batch.len < WRITE_BATCH {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            // Under load, frames for this connection are usually being produced by tasks that
            // are ready to run: give them one turn so their frames share this write (one
            // syscall for many frames) instead of each costing its own.
            if yielded || batch.len >= WRITE_BATCH {
                break;
            }
            yielded = true;
            tokio::task::yield_now().await;
            next = queue.try_recv().ok();
            if next.is_none() {
                break;
            }
        }
        let written = match batch.write_to(&mut write).await {
            // TLS holds records until flushed; a TCP half's flush returns at once.
            Ok(()) => write.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            failure = Some(e);
            closed.cancel();
            break;
        }
        if batch.buf.capacity() > 4 * WRITE_BUFFER_KEPT && queue.is_empty() {
            batch.buf = BytesMut::new();
        }
    }
    let _ = write.shutdown().await;
    failure
}
/// Binds a listener on `addr` whose accept queue holds `backlog` connections, capped by the
/// kernel's `net.core.somaxconn` (std's `TcpListener::bind` asks for 128: 2,000 clients
/// connecting at once overflow it and wait for SYN retransmits, seconds each). Sized from the
/// server's connection limit, a burst of connects waits in the kernel instead.
pub fn bind(
    addr: std::net::SocketAddr,
    backlog: usize,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std does on Unix: a restarted process can bind again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(
        u32::try_from(backlog.min(somaxconn()))
            .unwrap_or(u32::MAX)
            .max(1),
    )
}

/// The kernel's cap on listen backlogs (4096 on current Linux when it cannot be read).
fn somaxconn() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

pub use server::{
    serve, serve_until, Admission, ConnTimeout, Connection, Handler, RequestError, RequestSlot,
    Server, ServerConfig, MAX_PENDING_REQUESTS,
};

#[cfg(test)]
mod tests;
