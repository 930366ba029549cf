//! `rocketmesh bench --mode connect`: how many new connections a listener takes per second.
//! Each worker connects (and, with `--tls-ca`, handshakes), sends one request, reads its answer
//! and closes, in a loop; the latency is that whole cycle. Over TLS it measures the handshake
//! rate (a permissive listener also peeks the first byte); `--tls-no-resumption` makes every
//! handshake a full one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use rocketmesh_filters::codec::codes::request_code;
use rocketmesh_filters::codec::RemotingCommand;

use crate::bench::{new_histogram, Shared};
use crate::cli::BenchArgs;
use crate::remoting::tls::ClientTls;
use crate::remoting::RemotingClient;

/// Runs `--connections` workers until the deadline; merged latency of their cycles.
pub(crate) async fn run(
    args: &BenchArgs,
    tls: Option<Arc<ClientTls>>,
    deadline: Instant,
    shared: &Arc<Shared>,
) -> Result<Histogram<u64>> {
    let host = args
        .tls_sni
        .clone()
        .unwrap_or_else(|| args.target.ip().to_string());
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (tls, shared, host, target) = (tls.clone(), shared.clone(), host.clone(), args.target);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            while !shared.done(deadline) {
                let t0 = Instant::now();
                let ok = match RemotingClient::connect_timeout_tls(
                    target,
                    &host,
                    tls.as_deref(),
                    Duration::from_secs(5),
                    None,
                )
                .await
                {
                    Ok(c) => {
                        // Any answer will do (a sidecar or broker answers a heartbeat).
                        let req = RemotingCommand::request(request_code::HEART_BEAT);
                        let answered = c.invoke(req, Duration::from_secs(5)).await.is_ok();
                        c.close();
                        answered
                    }
                    Err(_) => false,
                };
                shared.requests.fetch_add(1, Ordering::Relaxed);
                if ok {
                    shared.add_messages(1);
                    let _ = hist.record(t0.elapsed().as_nanos() as u64);
                } else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut latency = new_histogram();
    for t in tasks {
        latency.add(&t.await?)?;
    }
    Ok(latency)
}
