//! The fuzz target's check (`rocketmesh_xds::fuzzing::check`, also run by `xds/fuzz`) over a few
//! thousand inputs, so CI exercises the decode -> model path without cargo-fuzz: random bytes,
//! and valid encodings (delta responses of each type, lone resources) with bytes flipped,
//! inserted and cut off. Seeded, so a failure reproduces.

use std::collections::BTreeMap;

use prost::Message;
use rocketmesh_xds::fuzzing::check;
use rocketmesh_xds::model::{BrokerQueues, TopicRouteSpec};
use rocketmesh_xds::resources::{
    build_load_assignment, build_topic, cluster_to_proto, load_assignment_to_proto, to_any,
    vhost_to_proto, CLUSTER_TYPE, LOAD_ASSIGNMENT_TYPE, VIRTUAL_HOST_TYPE,
};
use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};

fn spec() -> TopicRouteSpec {
    TopicRouteSpec {
        topic: "TopicF".into(),
        brokers: ["broker-a", "broker-b"]
            .into_iter()
            .map(|b| BrokerQueues {
                broker_name: b.into(),
                cluster_name: "DefaultCluster".into(),
                addrs: BTreeMap::from([(0, "127.0.0.1:10911".into()), (1, "[::1]:10912".into())]),
                perm: 6,
                read_queue_num: 4,
                write_queue_num: 4,
            })
            .collect(),
    }
}

/// Valid inputs, each with the selector byte `check` expects in front.
fn seeds() -> Vec<Vec<u8>> {
    let s = spec();
    let (vhost, inline) = build_topic("rocketmq/TopicF", &s, false);
    let (_, eds) = build_topic("rocketmq/TopicF", &s, true);
    let la = build_load_assignment(&s);
    let delta = |type_url: &str, name: &str, any| DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: "n".into(),
        resources: vec![Resource {
            name: name.into(),
            version: "1".into(),
            resource: Some(any),
            ..Default::default()
        }],
        removed_resources: vec!["rocketmq/Gone".into()],
        ..Default::default()
    };
    let with = |sel: u8, body: Vec<u8>| [vec![sel], body].concat();
    vec![
        with(
            0,
            delta(
                VIRTUAL_HOST_TYPE,
                &vhost.name,
                to_any(VIRTUAL_HOST_TYPE, &vhost_to_proto(&vhost)),
            )
            .encode_to_vec(),
        ),
        with(
            0,
            delta(
                CLUSTER_TYPE,
                &inline.name,
                to_any(CLUSTER_TYPE, &cluster_to_proto(&inline)),
            )
            .encode_to_vec(),
        ),
        with(
            0,
            delta(
                LOAD_ASSIGNMENT_TYPE,
                &la.cluster_name,
                to_any(LOAD_ASSIGNMENT_TYPE, &load_assignment_to_proto(&la)),
            )
            .encode_to_vec(),
        ),
        with(1, cluster_to_proto(&inline).encode_to_vec()),
        with(1, cluster_to_proto(&eds).encode_to_vec()),
        with(2, vhost_to_proto(&vhost).encode_to_vec()),
        with(3, load_assignment_to_proto(&la).encode_to_vec()),
    ]
}

fn mutate(rng: &mut fastrand::Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(0..4) {
            // Keep the selector byte: mutate the message.
            0 if b.len() > 1 => {
                let i = rng.usize(1..b.len());
                b[i] = rng.u8(..);
            }
            1 if b.len() > 1 => {
                let i = rng.usize(1..b.len());
                b[i] ^= 1 << rng.u8(0..8);
            }
            2 => {
                let i = rng.usize(1..=b.len().max(1)).min(b.len());
                b.insert(i, rng.u8(..));
            }
            _ => {
                let keep = rng.usize(1..=b.len().max(1)).min(b.len());
                b.truncate(keep);
            }
        }
    }
    b
}

#[test]
fn seeds_pass_the_check() {
    for s in seeds() {
        check(&s);
        // The delta seeds are accepted whole, so mutations start from the applied path.
        if s[0] == 0 {
            let p = rocketmesh_xds::client::apply_delta_bytes(&s[1..]).unwrap();
            assert_eq!((p.rejected, p.held), (0, 1), "{p:?}");
        }
    }
}

#[test]
fn random_and_mutated_inputs_pass_the_check() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0fde_c0de);
    let seeds = seeds();
    for _ in 0..3000 {
        let seed = seeds[rng.usize(..seeds.len())].clone();
        let input = mutate(&mut rng, seed);
        check(&input);
    }
    for _ in 0..2000 {
        let len = rng.usize(..512);
        let input: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        check(&input);
    }
}
