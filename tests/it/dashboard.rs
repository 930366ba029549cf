//! The Grafana dashboard (`examples/grafana/rocketmesh.json`) against live processes: a control
//! plane, a broker and a sidecar (the `rocketmesh` binary, each with its own admin server and
//! recorder, as deployed) carry a little traffic (sends, pops and acks, a legacy consumer's pulls
//! through the translator); then every metric that a panel's query or a variable's query names
//! must be exported by at least one of them in `/stats/prometheus`. A dashboard naming a metric
//! that nothing exports fails here (checked below with a made-up one).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::interop::{admin_get, start_rocketmesh, ControlPlaneProc, SidecarProc};
use crate::support::{create_topic, free_ports, temp_dir};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/grafana/rocketmesh.json"
);
const TOPIC: &str = "DashboardTopic";

/// PromQL words that are neither metrics nor functions called with parentheses.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
/// Aggregation operators: `sum by (x) (...)` puts a clause between the name and its parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers (`{..}`),
/// range and subquery brackets (`[..]`), strings and grouping label lists (`by (..)`,
/// `on (..)`...), that are neither functions, aggregations, keywords, numbers nor Grafana
/// variables (`$x`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // From an opening bracket to just past its match (strings inside skipped).
    let skip_group = |mut j: usize, open: char, close: char| {
        let mut depth = 0;
        while j < c.len() {
            match c[j] {
                '"' | '\'' | '`' => j = skip_string(&c, j) - 1,
                x if x == open => depth += 1,
                x if x == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            i = skip_group(i, '{', '}');
        } else if ch == '[' {
            i = skip_group(i, '[', ']');
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // 0.99, 5m, 1e3: a number or a duration.
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch == '$' || ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) {
                if c.get(next) == Some(&'(') {
                    i = skip_group(next, '(', ')');
                }
            } else if word.starts_with('$')
                || c.get(next) == Some(&'(')
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                // A variable, a function or aggregation, or a keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Just past the string literal starting at `start` (backslash escapes honoured).
fn skip_string(c: &[char], start: usize) -> usize {
    let quote = c[start];
    let mut j = start + 1;
    while j < c.len() && c[j] != quote {
        j += if c[j] == '\\' && quote != '`' { 2 } else { 1 };
    }
    j + 1
}

/// Every query of the dashboard, with where it is: panel targets (rows' nested panels too) and
/// the templating variables' `label_values(METRIC, label)` queries.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            panels(&p["panels"], out);
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_owned()));
                }
            }
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        let Some(inner) = q.and_then(|q| q.strip_prefix("label_values(")) else {
            continue;
        };
        let metric = inner.split([',', ')']).next().unwrap_or_default();
        let name = v["name"].as_str().unwrap_or("?");
        out.push((format!("variable ${name}"), metric.to_owned()));
    }
    out
}

/// The series names a scrape exposes: every sample's name, and for histogram and summary
/// families `_bucket`, `_sum` and `_count` (a bare histogram name selects nothing in PromQL).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            if let (Some(name), Some("histogram" | "summary")) = (f.next(), f.next()) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// What the queries name that `live` does not have: (where, metric).
fn missing(queries: &[(String, String)], live: &BTreeSet<String>) -> Vec<(String, String)> {
    queries
        .iter()
        .flat_map(|(at, q)| metric_names(q).into_iter().map(move |m| (at.clone(), m)))
        .filter(|(_, m)| !live.contains(m))
        .collect()
}

/// `rocketmesh bench ...` against `target` once; its JSON summary.
fn bench(dir: &Path, target: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .args(["bench", "--target", target, "--topic", TOPIC, "--json"])
        .args(["--connections", "1", "--inflight", "4", "--size", "256"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run rocketmesh bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.lines().find(|l| l.starts_with('{'));
    assert!(
        out.status.success() && json.is_some(),
        "bench {args:?}: {out:?}"
    );
    serde_json::from_str(json.unwrap_or_default()).unwrap()
}

#[test]
fn metric_names_are_read_from_promql() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        metric_names(
            r#"sum by (code) (rate(a_total{instance=~"$sidecar",x="{"}[$__rate_interval]))"#
        ),
        set(&["a_total"])
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le, broker) (rate(h_bucket[5m])))"),
        set(&["h_bucket"])
    );
    assert_eq!(
        metric_names("a + on (pod) group_left (x) b offset 5m > bool 0.5 or max without (i) (c)"),
        set(&["a", "b", "c"])
    );
    assert_eq!(metric_names("sum(rate(x[1m:10s]))/ 1e3"), set(&["x"]));
}

#[test]
fn every_dashboard_metric_is_exported_by_a_live_process() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "no schemaVersion"
    );
    let qs = queries(&dashboard);
    assert!(qs.len() >= 20, "only {} queries in the dashboard", qs.len());

    let dir = temp_dir("dashboard");
    let [cp_admin, broker_admin, sidecar_admin] = free_ports::<3>();
    let cp_admin = format!("127.0.0.1:{cp_admin}");
    let broker_admin = format!("127.0.0.1:{broker_admin}");
    let cp = ControlPlaneProc::start_at(
        &dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--warmup-secs", "0", "--admin", &cp_admin],
    );
    let namesrv = cp.remoting.to_string();
    let data = dir.join("broker");
    let (_broker, ready) = start_rocketmesh(
        &dir,
        "broker",
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--vip-channel",
            "false",
            "--data-dir",
            data.to_str().unwrap(),
            "--namesrv",
            &namesrv,
            "--admin",
            &broker_admin,
        ],
    );
    let broker_addr = ready.split_whitespace().next().unwrap().parse().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(create_topic(broker_addr, TOPIC, 6, 4));
    let sidecar = SidecarProc::start_at(&dir, "sidecar", cp.xds, "127.0.0.1:0", sidecar_admin, &[]);
    let target = sidecar.addr.to_string();

    // Sends (once the new topic's registration reached the sidecar), pops and acks, and a
    // legacy consumer's pulls through the translator.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = bench(&dir, &target, &["--mode", "send", "--duration", "1"]);
        if sent["errors"] == 0 && sent["messages"].as_u64() > Some(0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "no send through the sidecar: {sent}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    bench(
        &dir,
        &target,
        &["--mode", "pop", "--messages", "50", "--duration", "10"],
    );
    bench(
        &dir,
        &target,
        &[
            "--mode",
            "consume",
            "--messages",
            "50",
            "--duration",
            "10",
            "--group",
            "dash",
        ],
    );

    // Scraped until every name is there (the store's flush histogram shows up after its first
    // flush), at most 30 s; then whatever is still missing fails the test.
    let admins = [
        cp_admin.parse().unwrap(),
        broker_admin.parse().unwrap(),
        sidecar.admin,
    ];
    let until = Instant::now() + Duration::from_secs(30);
    let (live, absent) = loop {
        let live: BTreeSet<String> = admins
            .iter()
            .flat_map(|a| exported(&admin_get(*a, "/stats/prometheus")))
            .collect();
        let absent = missing(&qs, &live);
        if absent.is_empty() || Instant::now() > until {
            break (live, absent);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        absent.is_empty(),
        "the dashboard names metrics no live process exports: {absent:?}"
    );
    let used: BTreeSet<String> = qs.iter().flat_map(|(_, q)| metric_names(q)).collect();
    eprintln!(
        "dashboard: {} queries, {} metrics, all exported ({} series names live)",
        qs.len(),
        used.len(),
        live.len()
    );

    // The same check fails for a panel naming a metric nothing exports.
    let bogus = vec![(
        "panel \"made up\"".to_owned(),
        "sum(rate(rocketmq_rocketmesh_send_message_v3{instance=~\"$sidecar\"}[5m]))".to_owned(),
    )];
    assert_eq!(
        missing(&bogus, &live),
        vec![(
            "panel \"made up\"".to_owned(),
            "rocketmq_rocketmesh_send_message_v3".to_owned()
        )]
    );
}
