//! Catalog unit tests.
use super::*;
use crate::model::BrokerQueues;
use crate::resources::build_topic;

fn route(topic: &str, perm: u32) -> TopicRouteSpec {
    TopicRouteSpec {
        topic: topic.into(),
        brokers: vec![BrokerQueues {
            broker_name: "b".into(),
            cluster_name: "C".into(),
            addrs: BTreeMap::from([(0, "127.0.0.1:10911".into())]),
            perm,
            read_queue_num: 4,
            write_queue_num: 4,
        }],
    }
}

#[test]
fn derived_resources_and_versions() {
    let c = Catalog::new(CatalogOptions::default());
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Absent);
    assert!(c.set_topic(route("T", 6)));
    assert!(!c.set_topic(route("T", 6)), "same content, no change");
    let v1 = c.vhost("T", "rc/T").found().unwrap();
    assert_eq!(v1.value.name, "rc/T");
    let cl = c.cluster("rocketmq.topic.T").found().unwrap();
    assert_eq!(cl.value.name, "rocketmq.topic.T");
    assert_eq!(
        c.changes_since(0).unwrap().1,
        vec![Changed::Topic("T".into())]
    );
    let rev = c.revision();
    assert!(c.set_topic(route("T", 4)));
    let v2 = c.vhost("T", "rc/T").found().unwrap();
    assert_ne!(v1.version, v2.version);
    assert_eq!(
        c.changes_since(rev).unwrap(),
        (rev + 1, vec![Changed::Topic("T".into())])
    );
    assert!(c.remove_topic("T"));
    assert_eq!(c.cluster("rocketmq.topic.T"), Lookup::Absent);
}

#[test]
fn change_log_is_bounded() {
    let c = Catalog::new(CatalogOptions::default());
    for i in 0..(CHANGE_LOG_LIMIT + 10) {
        c.set_topic(route(&format!("T{i}"), 6));
    }
    assert!(
        c.changes_since(1).is_none(),
        "too far behind: re-check everything"
    );
    let rev = c.revision();
    assert_eq!(c.changes_since(rev - 2).unwrap().1.len(), 2);
}

#[test]
fn demand_makes_unknown_topics_pending_once() {
    let (tx, mut rx) = mpsc::channel(4);
    let c = Catalog::with_demand(CatalogOptions::default(), tx);
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Pending);
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Pending);
    assert_eq!(rx.try_recv().unwrap(), "T");
    assert!(rx.try_recv().is_err(), "one fetch for concurrent lookups");
    c.mark_absent("T");
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Absent);
    c.set_topic(route("T", 6));
    assert!(c.vhost("T", "rocketmq/T").found().is_some());
}

#[test]
fn warmup_holds_back_unseen_topics_until_it_ends() {
    let c = Catalog::new(CatalogOptions::default());
    c.set_topic(route("Old", 6));
    c.begin_warmup();
    assert!(c.is_warming());
    // Unknown since start: pending (a broker may yet register it), for every derived kind.
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Pending);
    assert_eq!(c.cluster("rocketmq.topic.T"), Lookup::Pending);
    assert_eq!(c.load_assignment("rocketmq.topic.U"), Lookup::Pending);
    assert!(c.warming_unknown("T"));
    // Not a topic's cluster: nothing to wait for.
    assert_eq!(c.cluster("some-static"), Lookup::Absent);
    // Seen since start, then removed: a real removal, reported at once.
    c.set_topic(route("Gone", 6));
    assert!(c.remove_topic("Gone"));
    assert_eq!(c.vhost("Gone", "rocketmq/Gone"), Lookup::Absent);
    assert!(!c.warming_unknown("Gone"));
    // Held before the warm-up began: known.
    assert!(c.vhost("Old", "rocketmq/Old").found().is_some());
    let rev = c.revision();
    assert_eq!(c.end_warmup(), 2, "T and U were held back");
    assert!(!c.is_warming());
    let (_, mut changed) = c.changes_since(rev).unwrap();
    changed.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        changed,
        vec![
            Changed::Topic("T".into()),
            Changed::Topic("U".into()),
            Changed::WarmupEnded
        ]
    );
    assert_eq!(c.vhost("T", "rocketmq/T"), Lookup::Absent);
    assert_eq!(c.end_warmup(), 0, "idempotent");
}

#[test]
fn static_resources_win_and_diff() {
    let c = Catalog::new(CatalogOptions::default());
    c.set_topic(route("T", 6));
    let (mut vh, cl) = build_topic("rocketmq/T", &route("T", 6), false);
    vh.routes.truncate(1);
    let mut cl2 = cl.clone();
    cl2.name = "static-c".into();
    assert_eq!(
        c.replace_static(vec![vh.clone()], vec![cl2.clone()], vec![]),
        2
    );
    assert_eq!(
        c.vhost("T", "rocketmq/T")
            .found()
            .unwrap()
            .value
            .routes
            .len(),
        1
    );
    assert_eq!(c.replace_static(vec![vh], vec![cl2], vec![]), 0);
    assert_eq!(c.replace_static(vec![], vec![], vec![]), 2);
    assert_eq!(
        c.vhost("T", "rocketmq/T")
            .found()
            .unwrap()
            .value
            .routes
            .len(),
        3
    );
}

#[test]
fn policies_change_derived_versions_and_api_wins() {
    let c = Catalog::new(CatalogOptions::default());
    c.set_topic(route("T", 6));
    let name = topic_cluster_name("T");
    let plain = c.cluster(&name).found().unwrap();
    let rev = c.revision();
    let ro = TopicPolicy {
        no_write: ["b".to_owned()].into(),
        ..Default::default()
    };
    assert!(c.replace_static_policies(BTreeMap::from([("T".into(), ro.clone())])));
    assert!(c.revision() > rev);
    let stat = c.cluster(&name).found().unwrap();
    assert_ne!(stat.version, plain.version);
    // The API's policy wins; clearing it falls back to the file's.
    let excluded = TopicPolicy {
        no_read: ["b".to_owned()].into(),
        no_write: ["b".to_owned()].into(),
        ..Default::default()
    };
    assert!(c.set_policy("T", Some(excluded.clone())));
    assert!(!c.set_policy("T", Some(excluded)), "same policy: no change");
    assert_eq!(
        c.load_assignment(&name)
            .found()
            .unwrap()
            .value
            .endpoints
            .len(),
        0
    );
    assert!(c.set_policy("T", None));
    assert_eq!(c.cluster(&name).found().unwrap().version, stat.version);
    assert_eq!(c.policy("T").as_deref(), Some(&ro));
    assert_eq!(c.policy_topics(), ["T"]);
}
