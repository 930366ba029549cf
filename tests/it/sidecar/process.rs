//! The sidecar as a process: graceful drain, admin, SIGTERM before xDS answers.

use super::*;

// ---------------------------------------------------------------------------------------------
// 9. Graceful drain
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_parked_pops_and_refuses_new_connections() {
    bounded(TEST, async {
        let a = start_broker("broker-a", "drain", None).await;
        create_topic(a.addr, "DrainT", 6, 1).await;
        let path = write_bootstrap(
            "drain-cfg",
            &[("main", &[(&a, "broker-a", 6, 1)])],
            &[("DrainT", "main")],
        );
        let mut cfg = sidecar_config(None);
        cfg.bootstrap = Some(path);
        cfg.drain = Duration::from_secs(5);
        let sc = start_sidecar(cfg).await;
        let addr = sc.addr;
        let c = connect(addr).await;
        // A long poll parks at the broker (empty topic).
        let parked = {
            let c = c.clone();
            tokio::spawn(async move {
                let resp = c
                    .invoke(pop_request("DrainT", 10_000, 3_000), T)
                    .await
                    .unwrap();
                (resp, Instant::now())
            })
        };
        eventually("the pop parked at the broker", || a.parked("DrainT") == 1).await;
        let started = Instant::now();
        let shutdown = tokio::spawn(sc.shutdown());
        // New connections are refused once the drain began (a connection the listener took just
        // before it closed is closed without an answer), while the parked pop is still served.
        let deadline = Instant::now() + T;
        loop {
            let refused = match TcpStream::connect(addr).await {
                Err(_) => true,
                Ok(mut s) => {
                    let mut buf = [0u8; 1];
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    )
                }
            };
            if refused {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "new connections were still accepted while draining"
            );
        }
        assert!(!parked.is_finished(), "the parked pop ended early");
        // A message arriving at the broker completes the parked pop.
        let direct = connect(a.addr).await;
        send_ok(&direct, send_v2("DrainT", 0, "late")).await;
        let (resp, answered) = parked.await.unwrap();
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        assert_eq!(decode_records(resp.body()).unwrap().len(), 1);
        shutdown.await.unwrap();
        let done = Instant::now();
        assert!(
            answered <= done,
            "the pop was answered before the drain ended"
        );
        assert!(
            done - started < Duration::from_secs(5),
            "{:?}",
            done - started
        );
        direct.close();
        a.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_readiness_stats_and_config() {
    bounded(TEST, async {
        let cp = control_plane().await;
        let a = start_broker("broker-a", "admin", Some(cp.remoting_addr)).await;
        create_topic(a.addr, "AdminT", 6, 4).await;
        create_topic(a.addr, "UnusedT", 6, 4).await;
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.admin = Some(local());
        cfg.stat_prefix = "sctest_admin".into();
        let sc = start_sidecar(cfg).await;
        let admin = sc.admin_addr.unwrap();
        let (status, body) = http_get(admin, "/ready").await;
        assert_eq!(status, 200, "{body}");

        let c = connect(sc.addr).await;
        wait_route(&c, "AdminT", "AdminT", |_| true).await;
        let sends = 7;
        for i in 0..sends {
            send_ok(&c, send_v2("AdminT", i % 4, &format!("a{i}"))).await;
        }
        let (status, body) = http_get(admin, "/stats/prometheus").await;
        assert_eq!(status, 200);
        let line = body
            .lines()
            .find(|l| l.starts_with("rocketmq_sctest_admin_send_message_v2 "))
            .unwrap_or_else(|| panic!("no send_message_v2 counter in:\n{body}"));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(sends.to_string().as_str())
        );
        let stat = |body: &str, name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("rocketmq_sctest_admin_{name} ")))
                .map(str::to_owned)
        };
        assert_eq!(
            stat(&body, "downstream_connections").as_deref(),
            Some("1"),
            "the one SDK connection is counted: {body}"
        );
        assert_eq!(stat(&body, "send_message_v2_active").as_deref(), Some("0"));

        let (status, body) = http_get(admin, "/config_dump").await;
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            dump["xds"]["topics_ready"],
            serde_json::json!(["AdminT"]),
            "{dump}"
        );
        assert!(!body.contains("UnusedT"));
        c.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = http_get(admin, "/stats/prometheus").await;
            if stat(&body, "downstream_connections").as_deref() == Some("0") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a closed connection is still counted: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sc.shutdown().await;
        a.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The binary: SIGTERM ends the process even while the xDS server never answered.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_on_sigterm_before_xds_answers() {
    bounded(TEST, async {
        let silent = tokio::net::TcpListener::bind(local()).await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
            .args(["sidecar", "--xds", &silent_addr.to_string()])
            .args([
                "--listen",
                &listen,
                "--admin",
                &admin,
                "--vip-channel",
                "false",
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the sidecar");
        // Listening, so past start: the signal handlers are installed before the listener binds.
        let start = Instant::now();
        while TcpStream::connect(&listen).await.is_err() {
            assert!(start.elapsed() < T, "sidecar never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        terminate(child).await;
        holder.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The binary: `--xds` takes a host name, resolved when connecting; an unresolvable one leaves
// the sidecar running and unready, never crashed.
// ---------------------------------------------------------------------------------------------

/// Spawns the sidecar binary with `--xds xds`; returns the child and its listen and admin
/// addresses once it listens.
async fn spawn_sidecar_binary(xds: &str) -> (std::process::Child, SocketAddr, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .args(["sidecar", "--xds", xds])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
            "--vip-channel",
            "false",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the sidecar");
    let start = Instant::now();
    while TcpStream::connect(admin).await.is_err() {
        assert!(start.elapsed() < T, "sidecar never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, listen, admin)
}

/// SIGTERM, then waits (bounded) for a clean exit.
async fn terminate(mut child: std::process::Child) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > T {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sidecar did not exit within {T:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exited with {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reaches_the_control_plane_by_name() {
    bounded(TEST, async {
        let mesh = Mesh::start("xds-by-name", &["broker-a"]).await;
        create_topic(mesh.broker(0).addr, "NamedT", 6, 4).await;
        let xds_port = mesh.cp.xds_addr.unwrap().port();
        // `localhost` may resolve to ::1 first, where nothing listens: every address is tried.
        let (child, listen, admin) = spawn_sidecar_binary(&format!("localhost:{xds_port}")).await;
        eventually_async("the sidecar is ready", T, || async {
            http_get(admin, "/ready").await.0 == 200
        })
        .await;
        let c = connect(listen).await;
        eventually_async("the route through a named control plane", T, || async {
            call(&c, route_request("NamedT", 401)).await.code() == response_code::SUCCESS
        })
        .await;
        terminate(child).await;
        mesh.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_an_unresolvable_xds_name_stays_up_and_unready() {
    bounded(TEST, async {
        let (mut child, _listen, admin) = spawn_sidecar_binary("no-such-host.invalid:18000").await;
        // Several reconnect rounds later: still running, still unready, and it says why.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            assert!(child.try_wait().unwrap().is_none(), "the sidecar exited");
            let (status, body) = http_get(admin, "/ready").await;
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("xds"), "{body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        terminate(child).await;
    })
    .await;
}
