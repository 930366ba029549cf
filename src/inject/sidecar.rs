//! The containers and annotations `rocketmesh inject` adds to a pod, described once. The
//! kustomize component in `examples/k8s/sidecar/` carries the same containers; a unit test
//! (`inject::tests`) and the `k8s` integration test hold it equal to what is built here.
//!
//! * `rocketmesh-init` runs `rocketmesh iptables install` as root with NET_ADMIN and NET_RAW
//!   (iptables-legacy needs NET_RAW), so the application's outbound connections to the
//!   nameserver and broker ports reach the sidecar.
//! * `rocketmesh-proxy` is the sidecar as a native sidecar (Kubernetes 1.29+: an init container
//!   with `restartPolicy: Always`): it starts before the application's containers, its startup
//!   probe on `/ready` holds them back until it has its xDS configuration, and it stops after
//!   them. It runs as the uid the init container's rules exclude.

use serde::Serialize;
use serde_yaml_ng::Value;

/// Name of the init container that installs the redirect rules.
pub const INIT_NAME: &str = "rocketmesh-init";
/// Name of the sidecar (a restartable init container).
pub const PROXY_NAME: &str = "rocketmesh-proxy";
/// The sidecar's uid and gid; the iptables rules exclude this uid's connections.
pub const SIDECAR_UID: i64 = 10001;
/// The nameserver port: the sidecar's listener, where redirected connections arrive.
pub const REMOTING_PORT: u16 = 9876;
/// The broker port also redirected (an SDK that learnt a broker's address elsewhere).
pub const BROKER_PORT: u16 = 10911;
/// The sidecar's admin server (probes, /stats/prometheus).
pub const ADMIN_PORT: u16 = 15000;
/// Port names are at most 15 characters (IANA service names) and unique in a pod, hence the
/// prefix instead of `rocketmesh-admin` (16).
pub const ADMIN_PORT_NAME: &str = "mesh-admin";
pub const REMOTING_PORT_NAME: &str = "mesh-remoting";
/// The image when `--image` is not given.
pub const DEFAULT_IMAGE: &str = "rocketmesh:latest";
/// The control plane of `examples/k8s/base` (service `rocketmesh-cp`, namespace `rocketmq`).
pub const DEFAULT_XDS: &str = "rocketmesh-cp.rocketmq.svc:18000";
/// Pod template annotation that marks an injected pod (value [`STATUS_INJECTED`]).
pub const STATUS_ANNOTATION: &str = "rocketmesh.io/status";
pub const STATUS_INJECTED: &str = "injected";
/// Pod template annotation naming the rocketmesh version that injected it.
pub const VERSION_ANNOTATION: &str = "rocketmesh.io/version";
/// Opt-out: `rocketmesh.io/inject: "false"` on the workload or its pod template.
pub const INJECT_ANNOTATION: &str = "rocketmesh.io/inject";
/// The variable an application's SDK reads its nameserver address from.
pub const NAMESRV_ENV: &str = "NAMESRV_ADDR";
/// What an application without a nameserver address of its own is given: the sidecar, directly
/// (the rules never redirect loopback, and the sidecar listens on every address).
pub const APP_NAMESRV: &str = "127.0.0.1:9876";

/// Image pull policy of both containers (spelled as in Kubernetes on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    #[value(name = "Always")]
    Always,
    /// The default: images built locally (no registry) are never pulled.
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// What the injected containers depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    /// Image of both containers (it holds `rocketmesh` and the iptables binaries).
    pub image: String,
    pub pull_policy: PullPolicy,
    /// The xDS server the sidecar follows (`host:port`).
    pub xds: String,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: DEFAULT_IMAGE.to_owned(),
            pull_policy: PullPolicy::IfNotPresent,
            xds: DEFAULT_XDS.to_owned(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    image_pull_policy: &'static str,
    command: Vec<String>,
    args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
    #[serde(skip_serializing_if = "Option::is_none")]
    startup_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_probe: Option<Probe>,
    resources: Resources,
    security_context: SecurityContext,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: &'static str,
    value_from: EnvSource,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    field_ref: FieldRef,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    name: &'static str,
    container_port: u16,
    protocol: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    period_seconds: u32,
    timeout_seconds: u32,
    failure_threshold: u32,
}

#[derive(Serialize)]
struct HttpGet {
    path: &'static str,
    port: &'static str,
}

#[derive(Serialize)]
struct Resources {
    requests: Quantities,
    limits: Quantities,
}

#[derive(Serialize)]
struct Quantities {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<&'static str>,
    memory: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    allow_privilege_escalation: bool,
    capabilities: Capabilities,
    #[serde(skip_serializing_if = "Option::is_none")]
    privileged: Option<bool>,
    read_only_root_filesystem: bool,
    run_as_group: i64,
    run_as_non_root: bool,
    run_as_user: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seccomp_profile: Option<Seccomp>,
}

#[derive(Serialize)]
struct Capabilities {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add: Vec<&'static str>,
    drop: Vec<&'static str>,
}

#[derive(Serialize)]
struct Seccomp {
    #[serde(rename = "type")]
    kind: &'static str,
}

fn probe(path: &'static str, period: u32, failures: u32) -> Probe {
    Probe {
        http_get: HttpGet {
            path,
            port: ADMIN_PORT_NAME,
        },
        period_seconds: period,
        timeout_seconds: 1,
        failure_threshold: failures,
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn to_value(c: &Container) -> Value {
    // Serializing plain structs of strings, numbers and lists cannot fail.
    serde_yaml_ng::to_value(c).unwrap_or(Value::Null)
}

/// `rocketmesh-init`: installs the redirect rules, then exits.
pub fn init_container(opts: &InjectOptions) -> Value {
    let ports = format!("{REMOTING_PORT},{BROKER_PORT}");
    let c = Container {
        name: INIT_NAME,
        image: opts.image.clone(),
        image_pull_policy: opts.pull_policy.as_str(),
        command: strings(&["rocketmesh"]),
        args: vec![
            "iptables".into(),
            "install".into(),
            "--redirect-to".into(),
            REMOTING_PORT.to_string(),
            "--ports".into(),
            ports,
            "--exclude-uid".into(),
            SIDECAR_UID.to_string(),
        ],
        restart_policy: None,
        env: Vec::new(),
        ports: Vec::new(),
        startup_probe: None,
        readiness_probe: None,
        liveness_probe: None,
        // Runs a few iptables processes once; what it requests is counted against the pod only
        // while it runs (init containers' requests are not added to the app's).
        resources: Resources {
            requests: Quantities {
                cpu: Some("10m"),
                memory: "16Mi",
            },
            limits: Quantities {
                cpu: None,
                memory: "64Mi",
            },
        },
        // Root with only the two network capabilities; not read-only, since iptables-legacy
        // takes its lock in /run/xtables.lock.
        security_context: SecurityContext {
            allow_privilege_escalation: false,
            capabilities: Capabilities {
                add: vec!["NET_ADMIN", "NET_RAW"],
                drop: vec!["ALL"],
            },
            privileged: Some(false),
            read_only_root_filesystem: false,
            run_as_group: 0,
            run_as_non_root: false,
            run_as_user: 0,
            seccomp_profile: None,
        },
    };
    to_value(&c)
}

/// `rocketmesh-proxy`: the sidecar, transparent, as a native sidecar.
pub fn proxy_container(opts: &InjectOptions) -> Value {
    let c = Container {
        name: PROXY_NAME,
        image: opts.image.clone(),
        image_pull_policy: opts.pull_policy.as_str(),
        command: strings(&["rocketmesh"]),
        args: vec![
            "sidecar".into(),
            "--transparent".into(),
            "--listen".into(),
            format!("0.0.0.0:{REMOTING_PORT}"),
            "--extra-listen".into(),
            format!("[::1]:{REMOTING_PORT}"),
            "--admin".into(),
            format!("0.0.0.0:{ADMIN_PORT}"),
            "--xds".into(),
            opts.xds.clone(),
        ],
        restart_policy: Some("Always"),
        // Listening on 0.0.0.0, the sidecar advertises $POD_IP to the SDKs.
        env: vec![EnvVar {
            name: "POD_IP",
            value_from: EnvSource {
                field_ref: FieldRef {
                    field_path: "status.podIP",
                },
            },
        }],
        ports: vec![
            Port {
                name: REMOTING_PORT_NAME,
                container_port: REMOTING_PORT,
                protocol: "TCP",
            },
            Port {
                name: ADMIN_PORT_NAME,
                container_port: ADMIN_PORT,
                protocol: "TCP",
            },
        ],
        // Up to 2 minutes to reach the control plane before the kubelet restarts it; the
        // application's containers start only once this probe passed.
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        // From examples/bench/README.md (2-core VM, 1 KiB sends): the sidecar spends 0.54-0.56
        // CPU-s per 100k messages, so 100m sustains ~18k msg/s; its RSS was 22-29 MiB in the
        // bench runs and at most 26.6 MiB through the 10-minute soak (examples/soak/README.md).
        // Memory: request 64Mi (about twice the largest RSS measured), limit 256Mi for bursts of
        // large messages (frames up to 16 MiB) and the pull->pop prefetch buffers. No CPU limit:
        // CFS throttling a proxy on the data path turns into tail latency for the application.
        resources: Resources {
            requests: Quantities {
                cpu: Some("100m"),
                memory: "64Mi",
            },
            limits: Quantities {
                cpu: None,
                memory: "256Mi",
            },
        },
        security_context: SecurityContext {
            allow_privilege_escalation: false,
            capabilities: Capabilities {
                add: Vec::new(),
                drop: vec!["ALL"],
            },
            privileged: None,
            read_only_root_filesystem: true,
            run_as_group: SIDECAR_UID,
            run_as_non_root: true,
            run_as_user: SIDECAR_UID,
            seccomp_profile: Some(Seccomp {
                kind: "RuntimeDefault",
            }),
        },
    };
    to_value(&c)
}

/// The init containers, in the order they go first in `spec.initContainers`.
pub fn injected_containers(opts: &InjectOptions) -> [Value; 2] {
    [init_container(opts), proxy_container(opts)]
}

/// The pod template annotations that mark an injected pod.
pub fn status_annotations() -> [(&'static str, &'static str); 2] {
    [
        (STATUS_ANNOTATION, STATUS_INJECTED),
        (VERSION_ANNOTATION, env!("CARGO_PKG_VERSION")),
    ]
}
