//! Static resources from a YAML file: clusters of brokers and topic routes, for the control plane's
//! `--static` file (and a sidecar bootstrap without a control plane).
//!
//! ```yaml
//! clusters:
//!   - name: brokers
//!     eds: false                      # optional: serve endpoints through EDS
//!     subset_selectors: [[writable]]  # optional; default: the generated clusters' selectors
//!     fallback: no_fallback           # or any_endpoint, or {default_subset: {k: v}}
//!     endpoints:
//!       - address: 127.0.0.1:10911
//!         broker_name: broker-a
//!         broker_id: 0
//!         cluster_name: DefaultCluster
//!         perm: 6
//!         read_queue_num: 8
//!         write_queue_num: 8
//!         lb: {zone: a}               # optional; merged over the generated envoy.lb keys
//! topics:
//!   - topic: TopicA
//!     cluster: brokers                # the standard routes: send -> writable, consume -> readable
//!   - topic: TopicB
//!     routes:                         # or explicit routes, first match wins
//!       - code: {regex: "10|310|320"}
//!         cluster: brokers
//!         subset: {writable: true}
//! route_config:                       # Envoy's rocketmq_proxy RouteConfiguration shape
//!   name: rocketmq
//!   routes:
//!     - match: {topic: {exact: TopicC}, headers: [{name: code, exact_match: "310"}]}
//!       route: {cluster: brokers, metadata_match: {filter_metadata: {envoy.lb: {writable: true}}}}
//! ```
//!
//! Unknown fields are errors. Syntax and type errors name the path of the bad field (serde_yaml_ng
//! reports it, with line and column); semantic errors (unknown cluster, bad topic name, bad regex,
//! duplicates) name it too, e.g. `topics[1].routes[0].cluster: unknown cluster "x"`.
//!
//! Endpoints get the `envoy.lb` keys the control plane generates for registered brokers (`role`,
//! `broker_name`, `broker_id`, `readable`, `writable`, from `broker_id` and `perm`), so the standard
//! routes' subsets work; keys given in `lb` override them.

mod convert;
mod error;
mod schema;

use std::path::Path;

pub use convert::StaticResources;
pub use error::StaticConfigError;
pub use schema::*;

/// Largest static file read (guards against pointing the control plane at a huge file).
pub const MAX_STATIC_FILE: u64 = 16 << 20;

/// Reads and validates a static file.
pub fn load(path: &Path) -> Result<StaticResources, StaticConfigError> {
    let shown = path.display().to_string();
    let io = |source| StaticConfigError::Io {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_STATIC_FILE {
        return Err(StaticConfigError::TooLarge {
            path: shown,
            len,
            max: MAX_STATIC_FILE,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text)
}

/// Parses and validates static YAML.
pub fn parse(text: &str) -> Result<StaticResources, StaticConfigError> {
    let file: StaticFile = if text.trim().is_empty() {
        StaticFile::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| StaticConfigError::Syntax(e.to_string()))?
    };
    convert::into_resources(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        EndpointSource, MetaValue, RouteRequest, StringMatch, SubsetFallback, VirtualHostSpec,
    };

    const GOOD: &str = r#"
clusters:
  - name: brokers
    endpoints:
      - address: 127.0.0.1:10911
        broker_name: broker-a
        cluster_name: DefaultCluster
      - address: 127.0.0.1:10921
        broker_name: broker-b
        broker_id: 0
        cluster_name: DefaultCluster
        perm: 4
        read_queue_num: 4
        write_queue_num: 4
        lb: {zone: b}
  - name: eds-brokers
    eds: true
    fallback: any_endpoint
    endpoints:
      - address: 127.0.0.1:10931
        broker_name: broker-c
        cluster_name: C2
topics:
  - topic: TopicA
    cluster: brokers
  - topic: TopicB
    routes:
      - name: send
        code: {exact: 310}
        cluster: brokers
        subset: {writable: true}
      - code: {regex: "11|200050"}
        cluster: eds-brokers
route_config:
  name: rc
  routes:
    - match:
        topic: {exact: TopicC}
        headers: [{name: code, exact_match: "310"}]
      route:
        cluster: brokers
        metadata_match: {filter_metadata: {envoy.lb: {writable: true}}}
    - match: {topic: {exact: TopicC}}
      route: {cluster: eds-brokers}
"#;

    #[test]
    fn parses_every_shape() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.clusters.len(), 2);
        assert_eq!(r.load_assignments.len(), 1);
        assert_eq!(r.load_assignments[0].cluster_name, "eds-brokers");
        let brokers = &r.clusters[0];
        let EndpointSource::Inline(eps) = &brokers.endpoints else {
            panic!("inline expected")
        };
        assert_eq!(eps[0].perm, 6);
        assert_eq!(eps[0].lb.get("writable"), Some(&MetaValue::Bool(true)));
        assert_eq!(eps[1].lb.get("writable"), Some(&MetaValue::Bool(false)));
        assert_eq!(eps[1].lb.get("zone"), Some(&MetaValue::from("b")));
        assert_eq!(r.clusters[1].fallback, SubsetFallback::AnyEndpoint);
        assert_eq!(
            r.clusters[1].endpoints,
            EndpointSource::Eds("eds-brokers".into())
        );

        let topics: Vec<&str> = r.vhosts.iter().map(|v| v.topic.as_str()).collect();
        assert_eq!(topics, ["TopicA", "TopicB", "TopicC"]);
        let a = &r.vhosts[0];
        assert_eq!(a.name, "rocketmq/TopicA");
        assert_eq!(a.routes.len(), 3);
        assert!(a.routes.iter().all(|r| r.cluster == "brokers"));
        let send = RouteRequest {
            code: 310,
            ..Default::default()
        };
        let pop = RouteRequest {
            code: 200050,
            ..Default::default()
        };
        let first = |v: &VirtualHostSpec, req: &RouteRequest<'_>| {
            v.routes.iter().position(|r| r.matches(req))
        };
        assert_eq!(first(a, &send), Some(0));
        assert_eq!(first(a, &pop), Some(1));
        let b = &r.vhosts[1];
        assert_eq!(
            b.routes[0].headers[0].matcher,
            StringMatch::Exact("310".into())
        );
        assert_eq!(first(b, &pop), Some(1));
        let c = &r.vhosts[2];
        assert_eq!(c.name, "rc/TopicC");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(
            c.routes[0].subset.get("writable"),
            Some(&MetaValue::Bool(true))
        );
        assert_eq!(first(c, &pop), Some(1));
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_cluster_may_carry_upstream_tls() {
        let r = parse(
            "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C}\n    tls:\n      ca_file: /etc/certs/ca.pem\n      sni: broker.mq\n      identities:\n        - {kind: uri, matcher: !exact 'spiffe://td/ns/mq/sa/broker'}\n",
        )
        .unwrap();
        let tls = r.clusters[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca_file, "/etc/certs/ca.pem");
        assert_eq!(tls.sni.as_deref(), Some("broker.mq"));
        assert_eq!(
            tls.identities[0].kind,
            rocketmesh_remoting::tls::SanKind::Uri
        );
        assert!(r.clusters[1..].iter().all(|c| c.tls.is_none()));
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let e = err("clusters:\n  - name: c\n    endpoints:\n      - address: a:1\n        broker_name: b\n        cluster_name: C\n        colour: red\n");
        assert!(e.contains("clusters[0].endpoints[0]"), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = err("topic: []\n");
        assert!(e.contains("unknown field `topic`"), "{e}");
    }

    #[test]
    fn policies_and_weights_are_read_and_checked() {
        let ok = parse(
            "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C, weight: 3}\n\
             policies:\n  T:\n    weights: {broker-a: 90, broker-b: 10}\n    no_read: [broker-c]\n",
        )
        .unwrap();
        let crate::model::EndpointSource::Inline(eps) = &ok.clusters[0].endpoints else {
            panic!("inline endpoints");
        };
        assert_eq!(eps[0].weight, Some(3));
        let p = &ok.policies["T"];
        assert_eq!(p.weights["broker-a"], 90);
        assert!(!p.readable("broker-c") && p.writable("broker-b"));
        let e = err("policies:\n  T:\n    weights: {a: 0}\n");
        assert!(e.contains("policies.T") && e.contains("sum to 0"), "{e}");
        let e = err("policies:\n  T:\n    weight: {a: 1}\n");
        assert!(e.contains("weight"), "{e}");
    }

    #[test]
    fn type_errors_name_their_path() {
        let e = err("clusters:\n  - name: c\n    endpoints:\n      - address: a:1\n        broker_name: b\n        cluster_name: C\n        perm: many\n");
        assert!(e.contains("clusters[0].endpoints[0].perm"), "{e}");
    }

    #[test]
    fn semantic_errors_name_their_path() {
        let cluster = "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C}\n";
        let cases = [
            (
                format!("{cluster}topics:\n  - {{topic: T, cluster: nope}}\n"),
                "topics[0].cluster: unknown cluster \"nope\"",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: 'bad/topic', cluster: c}}\n"),
                "topics[0].topic: invalid topic name",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: T, cluster: c}}\n  - {{topic: T, cluster: c}}\n"),
                "topics[1].topic: duplicate topic",
            ),
            (
                format!("{cluster}topics:\n  - topic: T\n    routes:\n      - {{cluster: c, code: {{regex: '(10'}}}}\n"),
                "topics[0].routes[0].code.regex: bad regex",
            ),
            (
                format!("{cluster}topics:\n  - {{topic: T}}\n"),
                "topics[0]: needs `cluster` or `routes`",
            ),
            (
                "clusters:\n  - name: c\n    endpoints:\n      - {address: 'nohost', broker_name: b, cluster_name: C}\n".to_owned(),
                "clusters[0].endpoints[0].address",
            ),
            (
                "clusters:\n  - name: c\n    endpoints:\n      - {address: 'h:1', broker_name: b, cluster_name: C, perm: 99}\n".to_owned(),
                "clusters[0].endpoints[0].perm",
            ),
            (
                format!("{cluster}  - name: c\n    endpoints: []\n"),
                "clusters[1].name: duplicate cluster",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{prefix: T}}}}\n      route: {{cluster: c}}\n"),
                "route_config.routes[0].match.topic: only `exact`",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{exact: T}}, headers: [{{name: tag, exact_match: x}}]}}\n      route: {{cluster: c}}\n"),
                "route_config.routes[0].match.headers[0].name",
            ),
            (
                format!("{cluster}route_config:\n  routes:\n    - match: {{topic: {{exact: T}}}}\n      route: {{cluster: zz}}\n"),
                "route_config.routes[0].route.cluster: unknown cluster",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn empty_file_is_empty_config() {
        assert_eq!(parse("").unwrap(), StaticResources::default());
        assert_eq!(parse("# nothing\n").unwrap(), StaticResources::default());
    }

    #[test]
    fn example_file_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/xds/static.yaml");
        let r = load(Path::new(path)).unwrap();
        assert!(!r.vhosts.is_empty());
        assert!(!r.clusters.is_empty());
    }
}
