use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rocketmesh_filters::codec::codes::{request_code, response_code};
use rocketmesh_filters::codec::{RemotingCodec, RemotingCommand, ResponseEncoding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::*;

/// Echoes the body back; code 999 sleeps first (to show out-of-order completion); unknown codes
/// get REQUEST_CODE_NOT_SUPPORTED.
struct Echo;

impl Handler for Echo {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        match req.code() {
            request_code::HEART_BEAT => Some(
                req.response_to(response_code::SUCCESS, ResponseEncoding::Json)
                    .with_body(req.body().clone()),
            ),
            999 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some(req.response_to(response_code::SUCCESS, ResponseEncoding::Json))
            }
            _ => Some(req.not_supported_response(ResponseEncoding::Json)),
        }
    }
}

async fn start() -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        Arc::new(Echo),
        ServerConfig::default(),
        stop.clone(),
    ));
    (addr, stop)
}

#[tokio::test]
async fn many_requests_in_flight_on_one_connection() {
    let (addr, stop) = start().await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let slow = {
        let c = client.clone();
        tokio::spawn(async move {
            c.invoke(RemotingCommand::request(999), Duration::from_secs(5))
                .await
        })
    };
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = RemotingCommand::request(request_code::HEART_BEAT)
                .with_body(i.to_be_bytes().to_vec());
            let resp = c.invoke(req, Duration::from_secs(5)).await.unwrap();
            assert_eq!(&resp.body()[..], &i.to_be_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!slow.is_finished(), "fast requests overtook the slow one");
    assert_eq!(slow.await.unwrap().unwrap().code(), response_code::SUCCESS);
    stop.cancel();
}

#[tokio::test]
async fn bodies_written_apart_arrive_whole_and_in_order() {
    // Bodies below and above BODY_APART, and larger than a socket buffer (partial vectored
    // writes), mixed on one connection in both directions (client and server write loops).
    let (addr, stop) = start().await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let sizes = [
        0usize,
        7,
        BODY_APART - 1,
        BODY_APART,
        5_000,
        700_000,
        64,
        100_000,
    ];
    let mut tasks = Vec::new();
    for i in 0..120usize {
        let c = client.clone();
        let len = sizes[i % sizes.len()];
        tasks.push(tokio::spawn(async move {
            let body: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
            let req = RemotingCommand::request(request_code::HEART_BEAT).with_body(body.clone());
            let resp = c.invoke(req, Duration::from_secs(20)).await.unwrap();
            assert_eq!(resp.body().len(), len, "request {i}");
            assert!(resp.body()[..] == body[..], "request {i}: body changed");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.cancel();
}

#[tokio::test]
async fn unknown_code_names_the_code() {
    let (addr, stop) = start().await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let resp = client
        .invoke(RemotingCommand::request(12345), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::REQUEST_CODE_NOT_SUPPORTED);
    assert!(resp.remark().unwrap().contains("12345"));
    stop.cancel();
}

#[tokio::test]
async fn malformed_header_gets_an_error_and_the_connection_lives() {
    let (addr, stop) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let bad = br#"{"code":34,"opaque":5,"flag":"nope"}"#;
    let good = br#"{"code":34,"opaque":6,"flag":0}"#;
    for h in [&bad[..], &good[..]] {
        s.write_all(&((4 + h.len()) as u32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&(h.len() as u32).to_be_bytes()).await.unwrap();
        s.write_all(h).await.unwrap();
    }
    let mut codec = RemotingCodec::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        while let Some(cmd) = codec.decode(&mut buf).unwrap() {
            got.push(cmd);
        }
    }
    got.sort_by_key(RemotingCommand::opaque);
    assert_eq!(got[0].code(), response_code::SYSTEM_ERROR);
    assert!(got[0].remark().unwrap().contains("flag"));
    assert_eq!(got[1].code(), response_code::SUCCESS);
    stop.cancel();
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let (addr, stop) = start().await;
    let other = RemotingClient::connect(addr, None).await.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
        .await
        .expect("server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let resp = other
        .invoke(
            RemotingCommand::request(request_code::HEART_BEAT),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(resp.code(), response_code::SUCCESS);
    stop.cancel();
}

/// A peer that accepts one connection, never answers, and closes it after `hold`.
async fn silent_peer(hold: Duration) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(hold).await;
        drop(s);
    });
    (addr, peer)
}

#[tokio::test]
async fn timeouts_and_closed_connections_fail_fast() {
    let (addr, peer) = silent_peer(Duration::from_millis(300)).await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let err = client
        .invoke(RemotingCommand::request(1), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    let started = std::time::Instant::now();
    let err = client
        .invoke(RemotingCommand::request(1), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    peer.await.unwrap();
}

/// Hands a callback's result to the test.
struct ToChannel(tokio::sync::oneshot::Sender<Result<RemotingCommand, ClientError>>);

impl Completion for ToChannel {
    fn complete(self, result: Result<RemotingCommand, ClientError>) {
        let _ = self.0.send(result);
    }
}

fn callback() -> (
    ToChannel,
    tokio::sync::oneshot::Receiver<Result<RemotingCommand, ClientError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (ToChannel(tx), rx)
}

#[tokio::test]
async fn callbacks_get_answers_timeouts_and_closes() {
    // Answered: out of order, each callback with its own response.
    let (addr, shutdown) = start().await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let (slow, slow_rx) = callback();
    let (fast, fast_rx) = callback();
    client
        .try_invoke_with(RemotingCommand::request(999), Duration::from_secs(5), slow)
        .map_err(|_| "queued")
        .unwrap();
    let hb = RemotingCommand::request(request_code::HEART_BEAT).with_body(&b"hb"[..]);
    client
        .try_invoke_with(hb, Duration::from_secs(5), fast)
        .map_err(|_| "queued")
        .unwrap();
    let fast = fast_rx.await.unwrap().unwrap();
    assert_eq!(&fast.body()[..], b"hb");
    assert_eq!(
        slow_rx.await.unwrap().unwrap().code(),
        response_code::SUCCESS
    );
    shutdown.cancel();

    // Not answered: the sweep times the callback out, near its deadline.
    let (addr, peer) = silent_peer(Duration::from_millis(600)).await;
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let (late, late_rx) = callback();
    let started = std::time::Instant::now();
    client
        .try_invoke_with(
            RemotingCommand::request(1),
            Duration::from_millis(100),
            late,
        )
        .map_err(|_| "queued")
        .unwrap();
    let err = late_rx.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(500),
        "{took:?}"
    );
    // Pending when the peer closes: failed at once, not at its deadline.
    let (open, open_rx) = callback();
    let started = std::time::Instant::now();
    client
        .try_invoke_with(RemotingCommand::request(1), Duration::from_secs(30), open)
        .map_err(|_| "queued")
        .unwrap();
    let err = open_rx.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    peer.await.unwrap();

    // A closed connection takes nothing and hands the request back.
    let (refused, _rx) = callback();
    let back = client.try_invoke_with(RemotingCommand::request(7), Duration::from_secs(1), refused);
    assert!(matches!(back, Err((cmd, _)) if cmd.code() == 7));
}

/// A peer that answers a request and closes the connection in the same write: the answer must
/// reach the caller, not a "connection closed" error (the reader hands the answer over and then
/// sees the end of the stream; the caller must prefer the answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_followed_by_a_close_is_an_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const ROUNDS: usize = 200;
    // Every accepted connection is served on its own (another test's stray connect to a reused
    // port must not shift which connection gets which answer).
    let peer = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut codec = RemotingCodec::default();
                let mut buf = BytesMut::new();
                let req = loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => break f,
                        Ok(None) => {}
                        Err(_) => return,
                    }
                    if !matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                };
                let mut out = BytesMut::new();
                let resp = req.response_to(response_code::SUCCESS, ResponseEncoding::Json);
                tokio_util::codec::Encoder::encode(&mut codec, resp, &mut out).unwrap();
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let mut lost = 0;
    for _ in 0..ROUNDS {
        let c = RemotingClient::connect(addr, None).await.unwrap();
        match c
            .invoke(
                RemotingCommand::request(request_code::HEART_BEAT),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(r) => assert_eq!(r.code(), response_code::SUCCESS),
            Err(ClientError::Closed { .. }) => lost += 1,
            Err(e) => panic!("{e}"),
        }
        c.close();
    }
    peer.abort();
    assert_eq!(lost, 0, "answers reported as closed connections");
}

/// Writes one frame with a JSON header `h` and no body.
async fn write_json_frame(s: &mut TcpStream, h: &[u8]) {
    s.write_all(&((4 + h.len()) as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&(h.len() as u32).to_be_bytes()).await.unwrap();
    s.write_all(h).await.unwrap();
}

/// Counts decode failures the server reports; answers like [`Echo`].
#[derive(Default)]
struct Counting {
    decode_errors: std::sync::atomic::AtomicUsize,
}

impl Handler for Counting {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        Some(req.not_supported_response(ResponseEncoding::Json))
    }

    fn on_decode_error(
        &self,
        _conn: &Arc<Connection>,
        _error: &rocketmesh_filters::codec::CodecError,
    ) {
        self.decode_errors
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn undecodable_headers_are_answered_or_closed_and_always_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Counting::default());
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        handler.clone(),
        ServerConfig::default(),
        stop.clone(),
    ));

    // No code: the opaque is readable, so the client gets an error naming the problem.
    let mut s = TcpStream::connect(addr).await.unwrap();
    write_json_frame(&mut s, br#"{"opaque":9,"flag":0}"#).await;
    let mut codec = RemotingCodec::default();
    let mut buf = BytesMut::new();
    let resp = loop {
        if let Some(c) = codec.decode(&mut buf).unwrap() {
            break c;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("an answer, not silence")
            .unwrap();
        assert!(n > 0, "closed instead of answered");
    };
    assert_eq!(
        (resp.code(), resp.opaque()),
        (response_code::SYSTEM_ERROR, 9)
    );
    assert!(
        resp.remark().unwrap().contains("code"),
        "{:?}",
        resp.remark()
    );

    // Not JSON at all: nobody can be answered, so the connection is closed at once rather than
    // left for the client's own timeout.
    for bad in [&b"{a: 3"[..], b"\xff\xfe"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_json_frame(&mut s, bad).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("the connection is closed, not left open");
        assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    }

    // A frame announcing length 0 loses the framing: closed, and counted too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&0u32.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed")
        .ok();
    assert_eq!(
        handler
            .decode_errors
            .load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    stop.cancel();
}

/// Counts the connections the server closed on a timer, by reason.
#[derive(Default)]
struct Timeouts {
    partial: std::sync::atomic::AtomicUsize,
    idle: std::sync::atomic::AtomicUsize,
}

impl Handler for Timeouts {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        if req.code() == 999 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        Some(req.response_to(response_code::SUCCESS, ResponseEncoding::Json))
    }

    fn on_timeout(&self, _conn: &Arc<Connection>, why: ConnTimeout) {
        let n = match why {
            ConnTimeout::PartialFrame => &self.partial,
            ConnTimeout::Idle => &self.idle,
        };
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_and_idle_connections_are_closed_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Timeouts::default());
    let config = ServerConfig {
        frame_timeout: Duration::from_millis(300),
        idle_timeout: Some(Duration::from_millis(600)),
        ..ServerConfig::default()
    };
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, handler.clone(), config, stop.clone()));
    let load = std::sync::atomic::Ordering::SeqCst;

    // Three bytes of a frame, then nothing: closed within 1.5 x frame_timeout (+ slack).
    let started = std::time::Instant::now();
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck.write_all(&[0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut rest))
        .await
        .expect("a stuck partial frame is closed")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(handler.partial.load(load), 1);

    // A request in flight for longer than the idle timeout keeps the connection: its answer
    // arrives. Then, with nothing in flight, the connection is closed as idle.
    let client = RemotingClient::connect(addr, None).await.unwrap();
    let resp = client
        .invoke(RemotingCommand::request(999), Duration::from_secs(5))
        .await
        .expect("a slow request on a quiet connection is answered");
    assert_eq!(resp.code(), response_code::SUCCESS);
    let idle_started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("an idle connection is closed");
    assert!(
        idle_started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        idle_started.elapsed()
    );
    assert_eq!(handler.idle.load(load), 1);
    assert_eq!(handler.partial.load(load), 1);
    stop.cancel();
}

/// Keeps the connection it serves, so a test can send requests to the client over it.
#[derive(Default)]
struct Keeper {
    conn: parking_lot::Mutex<Option<Arc<Connection>>>,
}

impl Handler for Keeper {
    async fn handle(
        self: &Arc<Self>,
        req: RemotingCommand,
        _conn: &Arc<Connection>,
    ) -> Option<RemotingCommand> {
        Some(req.response_to(response_code::SUCCESS, ResponseEncoding::Json))
    }

    fn on_open(&self, conn: &Arc<Connection>) {
        *self.conn.lock() = Some(conn.clone());
    }
}

/// A server keeping its one connection, and a client connected to it whose inbound requests
/// arrive on the returned channel.
async fn kept_connection() -> (
    Arc<Connection>,
    RemotingClient,
    tokio::sync::mpsc::Receiver<RemotingCommand>,
    CancellationToken,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keeper = Arc::new(Keeper::default());
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        keeper.clone(),
        ServerConfig::default(),
        stop.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(2048);
    let client = RemotingClient::connect(addr, Some(tx)).await.unwrap();
    // The heartbeat's answer proves the server has opened (and kept) the connection.
    client
        .invoke(
            RemotingCommand::request(request_code::HEART_BEAT),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let conn = keeper.conn.lock().clone().unwrap();
    (conn, client, rx, stop)
}

#[tokio::test]
async fn server_to_client_request_gets_the_clients_answer() {
    let (conn, client, mut inbound, stop) = kept_connection().await;
    let answer = tokio::spawn(async move {
        let req = inbound.recv().await.unwrap();
        assert_eq!(req.code(), request_code::GET_CONSUMER_RUNNING_INFO);
        let resp = req
            .response_to(response_code::SUCCESS, ResponseEncoding::Json)
            .with_body(&b"running"[..]);
        client.respond(resp).await.unwrap();
        client
    });
    let resp = conn
        .request(
            RemotingCommand::request(request_code::GET_CONSUMER_RUNNING_INFO),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(resp.body().as_ref(), b"running");
    assert_eq!(conn.pending_requests(), 0);
    drop(answer.await.unwrap());
    stop.cancel();
}

#[tokio::test]
async fn server_to_client_request_times_out_closes_and_is_bounded() {
    let (conn, client, inbound, stop) = kept_connection().await;
    // Nobody answers: a timeout, and the entry is gone afterwards.
    let err = conn
        .request(RemotingCommand::request(1), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::Timeout(Duration::from_millis(50)));
    assert_eq!(conn.pending_requests(), 0);

    // The table is bounded: the request past the limit fails at once.
    let mut waiting = Vec::new();
    for _ in 0..MAX_PENDING_REQUESTS {
        let c = conn.clone();
        waiting.push(tokio::spawn(async move {
            c.request(RemotingCommand::request(2), Duration::from_secs(30))
                .await
        }));
    }
    let c = conn.clone();
    tokio::time::timeout(Duration::from_secs(10), async move {
        while c.pending_requests() < MAX_PENDING_REQUESTS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let err = conn
        .request(RemotingCommand::request(3), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err, RequestError::TooManyPending);

    // The client goes away: every waiter learns it, and the table empties.
    client.close();
    drop(inbound);
    for w in waiting {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .unwrap()
                .unwrap(),
            Err(RequestError::Closed)
        );
    }
    assert_eq!(conn.pending_requests(), 0);
    assert_eq!(
        conn.request(RemotingCommand::request(4), Duration::from_secs(1))
            .await,
        Err(RequestError::Closed)
    );
    stop.cancel();
}
