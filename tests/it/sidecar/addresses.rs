//! What a pod needs of addresses, in process over loopback: the advertised address in route
//! answers and registrations, the refusal to advertise "every address", the VIP channel (listen
//! port - 2), and nameservers named by host name.

use super::*;

/// A port P with P and P - 2 free on loopback now (the VIP channel's pair).
fn free_vip_pair() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p > 1026 && std::net::TcpListener::bind(("127.0.0.1", p - 2)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair P, P-2 on loopback");
}

fn route_addrs(resp: &RemotingCommand) -> BTreeSet<String> {
    assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
    let data = TopicRouteData::parse(resp.body()).unwrap();
    data.broker_datas
        .iter()
        .flat_map(|b| b.broker_addrs.values().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_answers_and_registrations_name_the_advertised_address() {
    bounded(TEST, async {
        let cp = control_plane().await;
        // A broker advertising a pod DNS name registers that name, not its bound address.
        let named = "broker-a-0.brokers.rocketmq.svc:10911";
        let b = crate::support::start_broker_with("broker-a", "adv", Some(cp.remoting_addr), |c| {
            c.advertise = Some(named.into());
        })
        .await;
        assert_eq!(b.advertised, named);
        create_topic(b.addr, "AdvT", 6, 2).await;
        let ns = connect(cp.remoting_addr).await;
        eventually_async("the control plane routes AdvT", T, || async {
            let r = call(&ns, route_request("AdvT", 401)).await;
            r.code() == response_code::SUCCESS && route_addrs(&r).contains(named)
        })
        .await;

        // A sidecar told its address answers routes with it; its default is its bound address.
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.advertise = Some("app-7.default.svc:9876".into());
        let sc = start_sidecar(cfg).await;
        assert_eq!(sc.advertised, "app-7.default.svc:9876");
        let c = connect(sc.addr).await;
        let addrs = route_addrs(&call(&c, route_request("AdvT", 401)).await);
        assert_eq!(addrs, BTreeSet::from(["app-7.default.svc:9876".to_owned()]));
        let plain = start_sidecar(sidecar_config(cp.xds_addr)).await;
        let c2 = connect(plain.addr).await;
        let addrs = route_addrs(&call(&c2, route_request("AdvT", 401)).await);
        assert_eq!(addrs, BTreeSet::from([plain.addr.to_string()]));
        plain.shutdown().await;
        sc.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn every_address_without_advertise_is_refused_before_binding() {
    let mut cfg = sidecar_config(None);
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = sidecar::start(cfg).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--advertise") && msg.contains("POD_IP"),
        "{msg}"
    );

    let mut bcfg = BrokerConfig::new("[::]:0".parse().unwrap(), temp_dir("adv-refused"));
    bcfg.pod_ip = Some("not-an-ip".into());
    let err = broker::start(bcfg).await.unwrap_err();
    assert!(err.to_string().contains("POD_IP"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_channel_is_served_two_ports_below_and_can_be_turned_off() {
    bounded(TEST, async {
        let cp = control_plane().await;
        let p = free_vip_pair();
        let b = crate::support::start_broker_with("broker-a", "vip", Some(cp.remoting_addr), |c| {
            c.listen = SocketAddr::from(([127, 0, 0, 1], p));
        })
        .await;
        let vip = SocketAddr::from(([127, 0, 0, 1], p - 2));
        assert_eq!(b.vip_addr, Some(vip));
        // A client that derives the VIP address from the advertised one sends through it.
        create_topic(vip, "VipT", 6, 2).await;
        let c = connect(vip).await;
        assert_eq!(send_ok(&c, send_v2("VipT", 1, "over-vip")).await, 1);
        assert_eq!(max_offset(b.addr, "VipT", 1).await, 1);

        let sp = free_vip_pair();
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], sp));
        let sc = start_sidecar(cfg).await;
        assert_eq!(
            sc.vip_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], sp - 2)))
        );
        let via_vip = connect(SocketAddr::from(([127, 0, 0, 1], sp - 2))).await;
        wait_route(&via_vip, "VipT", "VipT through the VIP channel", |_| true).await;
        let addrs = route_addrs(&call(&via_vip, route_request("VipT", 401)).await);
        assert_eq!(addrs, BTreeSet::from([format!("127.0.0.1:{sp}")]));
        assert_eq!(
            send_ok(&via_vip, send_v2("VipT", 0, "sidecar-vip")).await,
            0
        );
        sc.shutdown().await;

        // Off: nothing listens two ports below.
        let op = free_vip_pair();
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], op));
        cfg.vip_channel = false;
        let off = start_sidecar(cfg).await;
        assert_eq!(off.vip_addr, None);
        assert!(TcpStream::connect(("127.0.0.1", op - 2)).await.is_err());
        off.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_and_control_planes_reach_nameservers_by_name() {
    bounded(TEST, async {
        let upstream = control_plane().await;
        let port = upstream.remoting_addr.port();
        // `localhost` resolves to 127.0.0.1 and maybe ::1, tried in turn.
        let b = crate::support::start_broker_with("broker-a", "byname", None, |c| {
            c.namesrv = Some(format!("localhost:{port}"));
        })
        .await;
        create_topic(b.addr, "NamedT", 6, 2).await;
        let ns = connect(upstream.remoting_addr).await;
        eventually_async("broker-a registered through a name", T, || async {
            call(&ns, route_request("NamedT", 401)).await.code() == response_code::SUCCESS
        })
        .await;
        // A control plane reading routes from an upstream nameserver named by host name.
        let mut cfg = rocketmesh::control_plane::ControlPlaneConfig::new(local());
        cfg.xds = Some(local());
        cfg.warmup = Duration::ZERO;
        cfg.upstream_namesrv = Some(format!("localhost:{port}"));
        let cp = rocketmesh::control_plane::start(cfg).await.unwrap();
        let sc = start_sidecar(sidecar_config(cp.xds_addr)).await;
        let c = connect(sc.addr).await;
        let resp = call(&c, route_request("NamedT", 401)).await;
        assert_eq!(route_addrs(&resp), BTreeSet::from([sc.addr.to_string()]));
        assert_eq!(send_ok(&c, send_v2("NamedT", 0, "via-name")).await, 0);
        sc.shutdown().await;
        cp.shutdown().await;
        b.shutdown().await;
        upstream.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_presents_the_virtual_broker_at_the_advertised_address() {
    bounded(TEST, async {
        let cp = control_plane().await;
        let b = crate::support::start_broker_with(
            "broker-a",
            "clusterinfo",
            Some(cp.remoting_addr),
            |c| {
                c.cluster = "ProdCluster".into();
            },
        )
        .await;
        create_topic(b.addr, "CiT", 6, 2).await;
        let mut cfg = sidecar_config(cp.xds_addr);
        cfg.advertise = Some("app-1.default.svc:9876".into());
        let sc = start_sidecar(cfg).await;
        let c = connect(sc.addr).await;
        wait_route(&c, "CiT", "CiT through the sidecar", |_| true).await;
        let resp = call(&c, RemotingCommand::request(rc::GET_BROKER_CLUSTER_INFO)).await;
        assert_eq!(resp.code(), response_code::SUCCESS, "{:?}", resp.remark());
        let info = rocketmesh_filters::codec::body::ClusterInfo::parse(resp.body()).unwrap();
        let virt = &info.broker_addr_table[VIRTUAL];
        assert_eq!(
            virt.broker_addrs.get(&0).map(String::as_str),
            Some("app-1.default.svc:9876")
        );
        assert_eq!(virt.cluster, "ProdCluster");
        assert_eq!(
            info.broker_addr_table.len(),
            1,
            "real brokers are not shown: {info:?}"
        );
        assert_eq!(
            info.cluster_addr_table["ProdCluster"],
            BTreeSet::from([VIRTUAL.to_owned()])
        );
        sc.shutdown().await;
        b.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}
