//! `rocketmesh inject` on the sample workloads in `testdata/k8s/`.

use serde_yaml_ng::Value;

use super::sidecar::{self, InjectOptions, PullPolicy};
use super::workload::Refusal;
use super::{inject, split_documents, DocumentError, Injection, Problem};

fn sample(name: &str) -> String {
    let path = format!("{}/testdata/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ok(name: &str) -> Injection {
    let text = sample(name);
    inject(name, &text, &InjectOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(name: &str, text: &str) -> Vec<DocumentError> {
    match inject(name, text, &InjectOptions::default()) {
        Ok(done) => panic!("{name} was injected:\n{}", done.output),
        Err(e) => {
            assert_eq!(e.source_name, name);
            e.errors
        }
    }
}

/// The documents of a YAML stream.
fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        }
        .unwrap_or_else(|| panic!("no {path} (at {key}) in {v:?}"))
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .expect("a list")
        .iter()
        .map(|c| at(c, "name").as_str().unwrap())
        .collect()
}

fn env_of<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    container
        .get("env")?
        .as_sequence()?
        .iter()
        .find(|e| at(e, "name").as_str() == Some(var))
        .and_then(|e| e.get("value")?.as_str())
}

fn injected_pod_spec(template: &Value) {
    let ann = at(template, "metadata.annotations");
    let ann = |key: &str| ann.get(key).and_then(Value::as_str);
    assert_eq!(ann("rocketmesh.io/status"), Some("injected"));
    assert_eq!(
        ann("rocketmesh.io/version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let init = at(template, "spec.initContainers").as_sequence().unwrap();
    let expected = sidecar::injected_containers(&InjectOptions::default());
    assert_eq!(
        init[..2],
        expected[..],
        "the injected containers come first"
    );
}

#[test]
fn the_injected_containers_are_what_the_issue_asks_for() {
    let [init, proxy] = sidecar::injected_containers(&InjectOptions::default());
    let words = |v: &Value| -> String {
        let cmd = at(v, "command").as_sequence().unwrap().iter();
        let args = at(v, "args").as_sequence().unwrap().iter();
        cmd.chain(args)
            .map(|w| w.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        words(&init),
        "rocketmesh iptables install --redirect-to 9876 --ports 9876,10911 --exclude-uid 10001"
    );
    assert_eq!(
        words(&proxy),
        "rocketmesh sidecar --transparent --listen 0.0.0.0:9876 --extra-listen [::1]:9876 \
         --admin 0.0.0.0:15000 --xds rocketmesh-cp.rocketmq.svc:18000"
    );
    let caps = at(&init, "securityContext.capabilities.add");
    assert_eq!(names_of(caps), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(at(&init, "securityContext.runAsUser").as_i64(), Some(0));
    assert_eq!(
        at(&init, "securityContext.runAsNonRoot").as_bool(),
        Some(false)
    );
    assert!(
        init.get("restartPolicy").is_none(),
        "the iptables step runs once"
    );

    assert_eq!(at(&proxy, "restartPolicy").as_str(), Some("Always"));
    let sc = at(&proxy, "securityContext");
    assert_eq!(at(sc, "runAsUser").as_i64(), Some(10001));
    assert_eq!(at(sc, "runAsGroup").as_i64(), Some(10001));
    assert_eq!(at(sc, "runAsNonRoot").as_bool(), Some(true));
    assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(names_of(at(sc, "capabilities.drop")), ["ALL"]);
    assert_eq!(at(&proxy, "env.0.name").as_str(), Some("POD_IP"));
    assert_eq!(
        at(&proxy, "env.0.valueFrom.fieldRef.fieldPath").as_str(),
        Some("status.podIP")
    );
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(
            at(&proxy, &format!("{probe}.httpGet.path")).as_str(),
            Some(path)
        );
        assert_eq!(
            at(&proxy, &format!("{probe}.httpGet.port")).as_str(),
            Some("mesh-admin")
        );
    }
    let ports: Vec<(String, u64)> = at(&proxy, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            let name = at(p, "name").as_str().unwrap();
            assert!(name.len() <= 15, "port name {name} longer than 15");
            (name.to_owned(), at(p, "containerPort").as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("mesh-remoting".to_owned(), 9876),
            ("mesh-admin".into(), 15000)
        ]
    );
    assert_eq!(at(&proxy, "resources.requests.cpu").as_str(), Some("100m"));
    assert_eq!(
        at(&proxy, "resources.requests.memory").as_str(),
        Some("64Mi")
    );
    assert_eq!(
        at(&proxy, "resources.limits.memory").as_str(),
        Some("256Mi")
    );
    for c in [&init, &proxy] {
        assert_eq!(at(c, "image").as_str(), Some("rocketmesh:latest"));
        assert_eq!(at(c, "imagePullPolicy").as_str(), Some("IfNotPresent"));
    }
}

fn names_of(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn options_reach_both_containers() {
    let opts = InjectOptions {
        image: "registry.example/rocketmesh:0.1.0".into(),
        pull_policy: PullPolicy::Always,
        xds: "cp.mesh.svc:18001".into(),
    };
    let done = inject("pod.yaml", &sample("pod.yaml"), &opts).unwrap();
    let pod = &docs(&done.output)[0];
    for c in at(pod, "spec.initContainers").as_sequence().unwrap() {
        assert_eq!(
            at(c, "image").as_str(),
            Some("registry.example/rocketmesh:0.1.0")
        );
        assert_eq!(at(c, "imagePullPolicy").as_str(), Some("Always"));
    }
    let args = at(pod, "spec.initContainers.1.args").as_sequence().unwrap();
    assert_eq!(
        args.last().and_then(Value::as_str),
        Some("cp.mesh.svc:18001")
    );
}

#[test]
fn a_deployment_gets_the_sidecar_first_and_keeps_everything_else() {
    let done = ok("deployment.yaml");
    assert_eq!(done.injected, ["document 1: Deployment shop/orders"]);
    assert!(done.notes.is_empty(), "{:?}", done.notes);
    let out = &docs(&done.output);
    assert_eq!(out.len(), 1);
    let d = &out[0];
    let keys: Vec<&str> = d
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["apiVersion", "kind", "metadata", "spec"],
        "key order kept"
    );
    assert_eq!(at(d, "spec.replicas").as_u64(), Some(2));
    let template = at(d, "spec.template");
    injected_pod_spec(template);
    assert_eq!(
        names(at(template, "spec.initContainers")),
        ["rocketmesh-init", "rocketmesh-proxy", "migrate"]
    );
    assert_eq!(
        at(template, "metadata.labels.app").as_str(),
        Some("orders"),
        "labels kept"
    );
    let app = at(template, "spec.containers.0");
    assert_eq!(env_of(app, "LOG_LEVEL"), Some("info"));
    assert_eq!(env_of(app, "NAMESRV_ADDR"), Some("127.0.0.1:9876"));
    assert_eq!(at(app, "ports.0.name").as_str(), Some("http"));
}

#[test]
fn injecting_twice_is_refused_naming_the_workload() {
    let once = ok("deployment.yaml").output;
    let errors = refused("injected.yaml", &once);
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!((e.document, e.line), (1, 1));
    let Problem::Refused { object, refusal } = &e.problem else {
        panic!("{e}")
    };
    assert_eq!(object, "Deployment shop/orders");
    assert!(
        matches!(refusal, Refusal::AlreadyInjected { evidence } if evidence.contains("rocketmesh.io/status")),
        "{refusal:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("Deployment shop/orders") && message.contains("already injected"),
        "{message}"
    );
}

#[test]
fn a_pod_carrying_the_sidecar_without_the_annotation_is_refused_too() {
    // As if someone had removed the annotation by hand.
    let once = ok("pod.yaml").output;
    let stripped = once
        .lines()
        .filter(|l| !l.contains("rocketmesh.io/"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!stripped.contains("rocketmesh.io/status"));
    let errors = refused("stripped.yaml", &stripped);
    let Problem::Refused { refusal, .. } = &errors[0].problem else {
        panic!("{}", errors[0])
    };
    assert!(
        matches!(refusal, Refusal::AlreadyInjected { evidence } if evidence.contains("rocketmesh-init")),
        "{refusal:?}"
    );
}

#[test]
fn a_statefulset_keeps_its_claims_and_annotations() {
    let done = ok("statefulset.yaml");
    let s = &docs(&done.output)[0];
    let template = at(s, "spec.template");
    injected_pod_spec(template);
    assert_eq!(
        at(template, "metadata.annotations.team").as_str(),
        Some("payments")
    );
    assert_eq!(
        at(
            s,
            "spec.volumeClaimTemplates.0.spec.resources.requests.storage"
        )
        .as_str(),
        Some("1Gi")
    );
    assert_eq!(
        env_of(at(template, "spec.containers.0"), "NAMESRV_ADDR"),
        Some("127.0.0.1:9876")
    );
}

#[test]
fn a_pod_is_its_own_template() {
    let done = ok("pod.yaml");
    assert_eq!(done.injected, ["document 1: Pod probe"]);
    let p = &docs(&done.output)[0];
    injected_pod_spec(p);
    assert_eq!(
        names(at(p, "spec.initContainers")),
        ["rocketmesh-init", "rocketmesh-proxy"]
    );
    assert_eq!(at(p, "spec.restartPolicy").as_str(), Some("Never"));
}

#[test]
fn other_objects_pass_through_byte_for_byte() {
    let text = sample("multi.yaml");
    let done = ok("multi.yaml");
    assert_eq!(
        done.injected,
        [
            "document 3: Deployment billing",
            "document 4: CronJob billing-report"
        ]
    );
    // The Service and the ConfigMap, comments included, are printed as they were read.
    let end = text.find("kind: Deployment").unwrap();
    let untouched = &text[..text[..end].rfind("---").unwrap()];
    assert!(done.output.starts_with(untouched), "{}", done.output);
    assert!(done
        .output
        .contains("targetPort: 8080   # the container's http port"));
    let out = docs(&done.output);
    assert_eq!(out.len(), 4);
    injected_pod_spec(at(&out[2], "spec.template"));
    let job = at(&out[3], "spec.jobTemplate.spec.template");
    injected_pod_spec(job);
    assert_eq!(at(job, "spec.restartPolicy").as_str(), Some("OnFailure"));
}

#[test]
fn a_file_without_workloads_is_printed_unchanged() {
    let text = "# only a service\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\n";
    let done = inject("svc.yaml", text, &InjectOptions::default()).unwrap();
    assert_eq!(done.output, text);
    assert!(done.injected.is_empty());
}

#[test]
fn an_existing_namesrv_addr_is_kept() {
    let done = ok("namesrv-set.yaml");
    let d = &docs(&done.output)[0];
    let containers = at(d, "spec.template.spec.containers");
    let [producer, consumer, auditor] = &containers.as_sequence().unwrap()[..] else {
        panic!("three containers: {containers:?}")
    };
    assert_eq!(
        env_of(producer, "NAMESRV_ADDR"),
        Some("rocketmesh-cp.rocketmq.svc:9876")
    );
    assert_eq!(at(producer, "env").as_sequence().unwrap().len(), 1);
    assert!(
        consumer.get("env").is_none(),
        "envFrom may set it: nothing added"
    );
    assert_eq!(env_of(auditor, "NAMESRV_ADDR"), Some("127.0.0.1:9876"));
    assert_eq!(done.notes.len(), 1, "{:?}", done.notes);
    assert!(
        done.notes[0].contains("container consumer") && done.notes[0].contains("envFrom"),
        "{:?}",
        done.notes
    );
}

#[test]
fn the_opt_out_annotation_leaves_workloads_unchanged() {
    let text = sample("opted-out.yaml");
    let done = ok("opted-out.yaml");
    assert_eq!(done.output, text);
    assert!(done.injected.is_empty());
    assert_eq!(done.notes.len(), 2, "{:?}", done.notes);
    assert!(done.notes[0].contains("Deployment batch-loader"));
    assert!(done.notes[1].contains("DaemonSet node-agent"));
}

#[test]
fn malformed_yaml_names_the_document_and_the_line() {
    let errors = refused("malformed.yaml", &sample("malformed.yaml"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    // Document 2 starts with `---` on line 8, its content on line 9; line 19 is mis-indented.
    assert_eq!((e.document, e.line), (2, 9));
    let Problem::Yaml { message } = &e.problem else {
        panic!("{e}")
    };
    assert!(message.contains("line 19"), "{message}");
    assert!(e
        .to_string()
        .starts_with("document 2 (line 9): invalid YAML"));
}

#[test]
fn a_file_with_some_documents_injected_is_refused_whole() {
    let injected = ok("pod.yaml").output;
    let text = format!("{}---\n{injected}", sample("deployment.yaml"));
    let errors = refused("mixed.yaml", &text);
    assert_eq!(errors.len(), 1, "only the injected one: {errors:?}");
    assert_eq!(errors[0].document, 2);
    assert!(errors[0]
        .to_string()
        .contains("Pod probe: already injected"));
}

#[test]
fn host_network_pods_are_refused() {
    let text = sample("opted-out.yaml").replace("rocketmesh.io/inject", "team");
    let errors = refused("hostnet.yaml", &text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(matches!(
        &errors[0].problem,
        Problem::Refused { object, refusal: Refusal::HostNetwork } if object == "DaemonSet node-agent"
    ));
}

#[test]
fn a_list_has_its_items_injected() {
    let done = ok("list.yaml");
    assert_eq!(done.injected, ["document 1, List item 2: ReplicaSet web"]);
    let list = &docs(&done.output)[0];
    assert_eq!(at(list, "items.0.kind").as_str(), Some("Service"));
    assert!(at(list, "items.0.spec").get("initContainers").is_none());
    injected_pod_spec(at(list, "items.1.spec.template"));
}

#[test]
fn workload_kinds_of_other_api_groups_are_left_alone() {
    let text = "apiVersion: example.com/v1\nkind: Deployment\nmetadata:\n  name: x\nspec: {}\n";
    let done = inject("crd.yaml", text, &InjectOptions::default()).unwrap();
    assert_eq!(done.output, text);
    assert!(done.notes[0].contains("example.com/v1"), "{:?}", done.notes);
}

#[test]
fn what_is_not_an_object_or_has_no_containers_is_refused() {
    let text = "- a\n- b\n---\nmetadata: {}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: []\n";
    let errors = refused("odd.yaml", text);
    let got: Vec<(usize, usize, String)> = errors
        .iter()
        .map(|e| (e.document, e.line, e.to_string()))
        .collect();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!((got[0].0, got[0].1), (1, 1));
    assert!(got[0].2.contains("found a list"), "{}", got[0].2);
    assert_eq!((got[1].0, got[1].1), (2, 4));
    assert!(got[1].2.contains("mapping without kind"), "{}", got[1].2);
    assert_eq!((got[2].0, got[2].1), (3, 6));
    assert!(
        got[2].2.contains("spec.containers is missing or empty"),
        "{}",
        got[2].2
    );
}

#[test]
fn documents_split_only_at_column_zero_markers() {
    let text = "a: |\n  ---\n  text\n--- \nb: 1\n---\n...\n";
    let chunks = split_documents(text);
    let got: Vec<(&str, usize, bool)> = chunks
        .iter()
        .map(|c| (c.text, c.first_line, c.marker))
        .collect();
    assert_eq!(
        got,
        [
            ("a: |\n  ---\n  text\n", 1, false),
            ("--- \nb: 1\n", 4, true),
            ("---\n...\n", 6, true)
        ]
    );
    let done = inject("scalar.yaml", text, &InjectOptions::default());
    assert!(done.is_err(), "`a: |` is not an object");
}

#[test]
fn the_kustomize_component_carries_the_same_containers() {
    // examples/k8s/sidecar/ patches workloads with these containers and annotations; the k8s
    // integration test also renders it with kustomize and compares it with `inject`.
    let path = format!(
        "{}/examples/k8s/sidecar/sidecar.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let patch: Value = serde_yaml_ng::from_str(&text).unwrap();
    let template = at(&patch, "spec.template");
    let expected = sidecar::injected_containers(&InjectOptions::default());
    let found = at(template, "spec.initContainers").as_sequence().unwrap();
    assert!(
        found[..] == expected[..],
        "{path} differs from src/inject/sidecar.rs; it should hold:\n{}",
        serde_yaml_ng::to_string(&expected).unwrap()
    );
    let annotations = at(template, "metadata.annotations").as_mapping().unwrap();
    let want: Vec<(&str, &str)> = sidecar::status_annotations().into();
    let got: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), v.as_str().unwrap()))
        .collect();
    assert_eq!(got, want, "{path}: pod annotations");
}

#[test]
fn the_flags_default_to_the_base_and_check_the_xds_address() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        let argv = ["rocketmesh", "inject"].iter().chain(args);
        crate::cli::Cli::try_parse_from(argv).map(|cli| match cli.command {
            crate::cli::Command::Inject(a) => a.options(),
            other => panic!("parsed {other:?}"),
        })
    };
    assert_eq!(parse(&["-f", "-"]).unwrap(), InjectOptions::default());
    let custom = parse(&[
        "--filename",
        "app.yaml",
        "--image",
        "r/rm:1",
        "--image-pull-policy",
        "Never",
        "--xds",
        "cp.ns.svc:18000",
    ])
    .unwrap();
    assert_eq!(
        custom,
        InjectOptions {
            image: "r/rm:1".into(),
            pull_policy: PullPolicy::Never,
            xds: "cp.ns.svc:18000".into(),
        }
    );
    assert!(parse(&["-f", "-", "--xds", "no-port"]).is_err());
    assert!(parse(&[]).is_err(), "-f is required");
}
