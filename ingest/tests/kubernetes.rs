//! What can be checked of the Kubernetes manifests (`deploy/k8s`) without a cluster; nothing here
//! applies them anywhere.
//!
//! Always: each kustomization lists every file beside it and nothing missing; the real edge
//! binary, started with the ConfigMap's file and the pod's environment, serves the probe paths on
//! the port the probes name (readiness failing and liveness passing while Kafka is away) and
//! drains within the time the pod leaves it after its preStop pause; the sink's admin listener
//! answers its probes while ClickHouse and Kafka are away; every `PIXELPIPE_*` variable is a
//! setting and changes the configuration; grace periods cover the pause and the drain the
//! configuration allows; sinks never outnumber the partitions; every image is the compose file's;
//! the autoscaler, the budgets and the Services select the right pods; pods run unprivileged with
//! room for the spool; the edge trusts no catch-all proxy range; the overlay's StatefulSet runs
//! the base's pod. Without kustomize the base is read file by file (generators made into
//! objects), and the overlay as the base without the Deployment its patch deletes, plus its own
//! resources; its autoscaler patch is checked by itself.
//!
//! With the `integration` feature, with kubectl (for its kustomize) and kubernetes-validate
//! (`deploy/local/kubectl.sh install`, `deploy/local/kubernetes-validate.sh install`;
//! `TEST_KUBECTL` and `TEST_KUBERNETES_VALIDATE` name them): the base and the overlay rendered by
//! kustomize pass `kubernetes-validate --strict` for [`KUBERNETES_VERSION`], and the checks above
//! hold for the rendered objects, patches applied and generated names hashed.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pixelpipe_ingest::client_ip::TrustedProxies;
use pixelpipe_ingest::config::Durability;
use pixelpipe_ingest::Config;
use pixelpipe_sink::SinkConfig;
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// The Kubernetes version whose schemas the manifests must pass: the oldest release they are
/// written for (docs/operations.md#kubernetes).
const KUBERNETES_VERSION: &str = "1.31.0";

/// What the edge's drain does that no setting bounds: the queue's hand-over to the producer, the
/// producer's purge into the spool, the spool's final fsync. A grace period leaves at least this
/// beyond what the settings allow.
const UNBOUNDED_DRAIN: Duration = Duration::from_secs(5);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

fn base_dir() -> PathBuf {
    k8s_dir().join("base")
}

fn overlay_dir() -> PathBuf {
    k8s_dir().join("overlays/disk-spool")
}

/// A path of its own under the temporary directory for each call.
fn scratch(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("pp-k8s-{}-{n}-{what}", std::process::id()))
}

// ---- YAML as JSON values ----

fn json_of(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => json!(s.parse::<f64>().unwrap()),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => panic!("a mapping key that is not a string: {other:?}"),
                    };
                    (key, json_of(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("YAML the manifests do not use: {y:?}"),
    }
}

fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .iter()
        .map(json_of)
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_docs(path: &Path) -> Vec<Value> {
    yaml_docs(&read(path), &path.display().to_string())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
}

// ---- kustomizations ----

struct Kustomization {
    dir: PathBuf,
    resources: Vec<String>,
    patches: Vec<String>,
    /// (name, files) of each configMapGenerator.
    config_maps: Vec<(String, Vec<String>)>,
    /// (name, env files) of each secretGenerator.
    secrets: Vec<(String, Vec<String>)>,
}

fn kustomization(dir: &Path) -> Kustomization {
    let doc = read_docs(&dir.join("kustomization.yaml")).remove(0);
    let generators = |key: &str, files: &str| {
        doc[key]
            .as_array()
            .map(|gens| {
                gens.iter()
                    .map(|g| (text(&g["name"], key).to_owned(), strings(&g[files])))
                    .collect()
            })
            .unwrap_or_default()
    };
    Kustomization {
        dir: dir.to_owned(),
        resources: strings(&doc["resources"]),
        patches: doc["patches"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|p| text(&p["path"], "patch").to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        config_maps: generators("configMapGenerator", "files"),
        secrets: generators("secretGenerator", "envs"),
    }
}

impl Kustomization {
    /// The resources that are files beside it (not other kustomizations).
    fn resource_files(&self) -> Vec<PathBuf> {
        self.resources
            .iter()
            .map(|r| self.dir.join(r))
            .filter(|p| !p.is_dir())
            .collect()
    }
}

/// `KEY=value` lines of an env file, as kustomize reads them (comments and blank lines skipped).
fn env_file(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The example of an env file that is not in the repository.
fn example_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.example", path.display()))
}

/// The objects of a kustomization as written, without kustomize: its resource files, a
/// ConfigMap for each configMapGenerator and a Secret for each secretGenerator, from the env
/// file's example (the operator's own file is never in the repository). Names are unhashed.
fn objects_as_written(k: &Kustomization) -> Vec<Value> {
    let mut objects: Vec<Value> = k
        .resource_files()
        .iter()
        .flat_map(|p| read_docs(p))
        .collect();
    for (name, files) in &k.config_maps {
        let data: serde_json::Map<String, Value> = files
            .iter()
            .map(|f| (f.clone(), json!(read(&k.dir.join(f)))))
            .collect();
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}));
    }
    for (name, envs) in &k.secrets {
        let data: serde_json::Map<String, Value> = envs
            .iter()
            .flat_map(|e| env_file(&example_of(&k.dir.join(e))))
            .map(|(k, v)| (k, json!(v)))
            .collect();
        objects.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}));
    }
    objects
}

fn base_objects() -> Vec<Value> {
    objects_as_written(&kustomization(&base_dir()))
}

/// The overlay without kustomize: the base less what the overlay's `$patch: delete` patches
/// name, plus the overlay's own resources. Its other patches are not applied (see
/// `the_overlay_autoscaler_drives_the_statefulset_and_only_up`).
fn overlay_objects() -> Vec<Value> {
    let overlay = kustomization(&overlay_dir());
    let mut deleted = Vec::new();
    for patch in &overlay.patches {
        for doc in read_docs(&overlay.dir.join(patch)) {
            if doc["$patch"] == "delete" {
                deleted.push((kind(&doc).to_owned(), name(&doc).to_owned()));
            }
        }
    }
    assert!(
        !deleted.is_empty(),
        "the overlay deletes the base's edge Deployment"
    );
    let mut objects: Vec<Value> = base_objects()
        .into_iter()
        .filter(|o| !deleted.contains(&(kind(o).to_owned(), name(o).to_owned())))
        .collect();
    objects.extend(overlay.resource_files().iter().flat_map(|p| read_docs(p)));
    objects
}

// ---- objects ----

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
}

/// Deployments, StatefulSets and Jobs: whatever runs pods.
fn workloads(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| ["Deployment", "StatefulSet", "Job"].contains(&kind(o)))
        .collect()
}

fn pod(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]
}

fn containers(w: &Value) -> Vec<&Value> {
    let p = pod(w);
    let mut all: Vec<&Value> = p["containers"].as_array().unwrap().iter().collect();
    all.extend(p["initContainers"].as_array().into_iter().flatten());
    all
}

fn program(c: &Value) -> &str {
    text(&c["command"][0], "command")
}

/// The long-running workload whose container runs `binary` (the sink's migration Job is not).
fn service_workload<'a>(objects: &'a [Value], binary: &str) -> &'a Value {
    let found: Vec<&Value> = workloads(objects)
        .into_iter()
        .filter(|w| kind(w) != "Job" && containers(w).iter().any(|c| program(c) == binary))
        .collect();
    assert_eq!(found.len(), 1, "one workload runs {binary}");
    found[0]
}

fn container_of<'a>(w: &'a Value, binary: &str) -> &'a Value {
    containers(w)
        .into_iter()
        .find(|c| program(c) == binary)
        .unwrap_or_else(|| panic!("{} runs no {binary}", name(w)))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// `port` of a probe or a Service's `targetPort`: a container port by name or by number.
fn container_port(c: &Value, port: &Value) -> u16 {
    let ports = c["ports"].as_array().unwrap();
    let found = match port {
        Value::String(n) => ports.iter().find(|p| p["name"] == n.as_str()),
        Value::Number(n) => ports
            .iter()
            .find(|p| &p["containerPort"] == port && n.is_u64()),
        _ => None,
    };
    let p = found.unwrap_or_else(|| panic!("no container port {port} in {}", c["name"]));
    p["containerPort"].as_u64().unwrap() as u16
}

/// A Kubernetes quantity in bytes (or cores for plain numbers).
fn quantity(q: &Value) -> u64 {
    let s = match q {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (digits, factor) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ]
    .iter()
    .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|d| (d.to_owned(), *f)))
    .unwrap_or((s.clone(), 1));
    digits
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("quantity {s}"))
        * factor
}

fn seconds(v: &Value, what: &str) -> Duration {
    Duration::from_secs(v.as_u64().unwrap_or_else(|| panic!("{what}: {v}")))
}

/// How long the preStop hook pauses: `sleep N` run in the container, or the native sleep action.
fn pre_stop(c: &Value) -> Duration {
    let hook = &c["lifecycle"]["preStop"];
    if let Some(command) = hook["exec"]["command"].as_array() {
        let words: Vec<&str> = command.iter().map(|w| w.as_str().unwrap()).collect();
        match words.as_slice() {
            [sleep, n] if sleep.ends_with("/sleep") || *sleep == "sleep" => {
                Duration::from_secs(n.parse().unwrap())
            }
            other => panic!("a preStop command that is not a pause: {other:?}"),
        }
    } else {
        seconds(&hook["sleep"]["seconds"], "preStop")
    }
}

fn grace(w: &Value) -> Duration {
    seconds(
        &pod(w)["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    )
}

// ---- what a container runs with ----

enum Loaded {
    Edge(Box<Config>),
    Sink(Box<SinkConfig>),
}

/// A container's program, config file text (from the ConfigMap its `--config` path is mounted
/// from), other arguments and environment (secrets from the Secret object, the pod's name for
/// `metadata.name`).
struct Run {
    workload: String,
    program: String,
    config_text: String,
    config_path: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn secret_value(objects: &[Value], secret: &str, key: &str) -> String {
    let s = find(objects, "Secret", secret).unwrap_or_else(|| panic!("no Secret {secret}"));
    if let Some(v) = s["stringData"][key].as_str() {
        return v.to_owned();
    }
    let encoded = s["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {secret} has no {key}"));
    base64(encoded)
}

fn base64(encoded: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("a Secret value that is not base64 ({e}): {encoded}"));
    String::from_utf8(bytes).unwrap()
}

fn run_of(objects: &[Value], w: &Value, c: &Value) -> Run {
    let args = strings(&c["args"]);
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{}: no --config", name(w)));
    let config_path = args[at + 1].clone();
    let rest: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at && *i != at + 1)
        .map(|(_, a)| a.clone())
        .collect();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| config_path.starts_with(&format!("{}/", text(&m["mountPath"], "mountPath"))))
        .unwrap_or_else(|| panic!("{}: {config_path} is on no volume", name(w)));
    let key = &config_path[text(&mount["mountPath"], "mountPath").len() + 1..];
    let volume = pod(w)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let map_name = text(
        &volume["configMap"]["name"],
        "the config volume's ConfigMap",
    );
    let map = find(objects, "ConfigMap", map_name)
        .unwrap_or_else(|| panic!("{}: no ConfigMap {map_name}", name(w)));
    let config_text = map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {map_name} has no {key}"))
        .to_owned();
    let env = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let var = text(&e["name"], "env name").to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
                secret_value(objects, text(&s["name"], "secret"), text(&s["key"], "key"))
            } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                format!("{}-0", name(w))
            } else {
                panic!("{var}: a source these tests do not know: {e}")
            };
            (var, value)
        })
        .collect();
    Run {
        workload: name(w).to_owned(),
        program: program(c).to_owned(),
        config_text,
        config_path,
        args: rest,
        env,
    }
}

impl Run {
    /// Loads the configuration as the binary does at start (defaults, the file, the environment,
    /// then `overrides`), with `env` in place of the container's.
    fn load_with(
        &self,
        env: &[(String, String)],
        overrides: &[(&str, &str)],
    ) -> Result<Loaded, String> {
        let file = scratch("config.toml");
        std::fs::write(&file, &self.config_text).unwrap();
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = env.to_vec();
        let loaded = match self.program.as_str() {
            "pixelpipe-ingest" => Config::load(Some(&file), env, &overrides)
                .map(|c| Loaded::Edge(Box::new(c)))
                .map_err(|e| e.to_string()),
            "pixelpipe-sink" => SinkConfig::load(Some(&file), env, &overrides)
                .map(|c| Loaded::Sink(Box::new(c)))
                .map_err(|e| e.to_string()),
            other => panic!("{}: unknown program {other}", self.workload),
        };
        std::fs::remove_file(&file).unwrap();
        loaded
    }

    fn load(&self) -> Loaded {
        self.load_with(&self.env, &[])
            .unwrap_or_else(|e| panic!("{} ({}): {e}", self.workload, self.program))
    }

    fn edge(&self) -> Config {
        match self.load() {
            Loaded::Edge(c) => *c,
            Loaded::Sink(_) => panic!("{} runs no edge", self.workload),
        }
    }

    fn sink(&self) -> SinkConfig {
        match self.load() {
            Loaded::Sink(c) => *c,
            Loaded::Edge(_) => panic!("{} runs no sink", self.workload),
        }
    }
}

fn same(a: &Loaded, b: &Loaded) -> bool {
    match (a, b) {
        (Loaded::Edge(a), Loaded::Edge(b)) => a == b,
        (Loaded::Sink(a), Loaded::Sink(b)) => a == b,
        _ => false,
    }
}

// ---- the checks, each on a set of objects: as written or as rendered ----

/// Every container's configuration loads as its binary would load it; each `PIXELPIPE_*`
/// variable is a setting (the binaries reject unknown names) that changes the result; the
/// arguments left are subcommands the binary has; and no pod gets Kubernetes' Service variables,
/// which for a `pixelpipe-*` Service are `PIXELPIPE_*` names no binary knows.
fn check_settings(objects: &[Value]) {
    let sink_main = read(&repo().join("sink/src/main.rs"));
    let services: Vec<String> = objects
        .iter()
        .filter(|o| kind(o) == "Service")
        .map(|s| format!("{}_SERVICE_HOST", name(s).to_uppercase().replace('-', "_")))
        .filter(|v| v.starts_with("PIXELPIPE_"))
        .collect();
    assert!(
        !services.is_empty(),
        "a pixelpipe-* Service to check against"
    );
    let mut checked = 0;
    for w in workloads(objects) {
        assert_eq!(
            pod(w)["enableServiceLinks"],
            false,
            "{}: Kubernetes' Service variables would stop the binary",
            name(w)
        );
        for c in containers(w) {
            let run = run_of(objects, w, c);
            let full = run.load();
            for (var, _) in run.env.iter().filter(|(v, _)| v.starts_with("PIXELPIPE_")) {
                let without: Vec<_> = run.env.iter().filter(|(v, _)| v != var).cloned().collect();
                let loaded = run.load_with(&without, &[]).unwrap();
                assert!(
                    !same(&loaded, &full),
                    "{}: {var} changes nothing",
                    run.workload
                );
                checked += 1;
            }
            // Why enableServiceLinks must stay off: the binary would refuse such a variable.
            for service_var in &services {
                let mut env = run.env.clone();
                env.push((service_var.clone(), "10.0.0.1".into()));
                let e = run.load_with(&env, &[]).err();
                assert!(
                    e.is_some_and(|e| e.contains(&service_var.to_lowercase()["pixelpipe_".len()..])),
                    "{}: {service_var} is refused by name",
                    run.workload
                );
            }
            match run.program.as_str() {
                "pixelpipe-ingest" => assert!(run.args.is_empty(), "{:?}", run.args),
                _ => {
                    for sub in &run.args {
                        // clap names a subcommand after its variant, in kebab case.
                        let variant: String = sub
                            .split('-')
                            .map(|w| w[..1].to_uppercase() + &w[1..])
                            .collect();
                        assert!(
                            sink_main.contains(&format!("    {variant},\n")),
                            "pixelpipe-sink has no subcommand {sub}"
                        );
                    }
                }
            }
        }
    }
    assert!(checked >= 3, "variables checked: {checked}");
}

/// Container ports are the listen ports of the configuration, on an address the kubelet and the
/// Service reach; the probes and the Prometheus annotations name them; every Service's target
/// port is a port of the pods it selects.
fn check_ports(objects: &[Value]) {
    let edge_w = service_workload(objects, "pixelpipe-ingest");
    let edge_c = container_of(edge_w, "pixelpipe-ingest");
    let edge = run_of(objects, edge_w, edge_c).edge();
    let sink_w = service_workload(objects, "pixelpipe-sink");
    let sink_c = container_of(sink_w, "pixelpipe-sink");
    let sink = run_of(objects, sink_w, sink_c).sink();
    for (w, c, public, admin) in [
        (
            edge_w,
            edge_c,
            Some(edge.http.listen_addr),
            edge.admin.listen_addr,
        ),
        (sink_w, sink_c, None, sink.admin.listen_addr),
    ] {
        let ports: Vec<u16> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        let mut listening: Vec<SocketAddr> = public.into_iter().collect();
        listening.push(admin);
        assert_eq!(
            ports,
            listening.iter().map(SocketAddr::port).collect::<Vec<_>>(),
            "{}: container ports are the listen ports",
            name(w)
        );
        for addr in &listening {
            assert!(
                !addr.ip().is_loopback(),
                "{}: {addr} is unreachable from outside the pod",
                name(w)
            );
        }
        let metrics = container_port(c, &json!("metrics"));
        assert_eq!(metrics, admin.port(), "{}", name(w));
        let annotations = &w["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/port"], metrics.to_string());
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &c[probe]["httpGet"];
            let port = container_port(c, &get["port"]);
            let expected = public.map_or(admin.port(), |p| p.port());
            assert_eq!(port, expected, "{}: {probe} port", name(w));
        }
    }
    for s in objects.iter().filter(|o| kind(o) == "Service") {
        let pods: Vec<&Value> = workloads(objects)
            .into_iter()
            .filter(|w| {
                labels_match(
                    &s["spec"]["selector"],
                    &w["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            pods.len(),
            1,
            "Service {} selects one workload's pods",
            name(s)
        );
        for p in s["spec"]["ports"].as_array().unwrap() {
            let c = containers(pods[0])[0];
            assert_eq!(
                container_port(c, &p["targetPort"]),
                edge.http.listen_addr.port(),
                "Service {}: only the public port",
                name(s)
            );
        }
    }
}

/// The edge's drain after SIGTERM, as far as settings bound it (ingest/src/lib.rs): in-flight
/// requests (`http.shutdown_grace_ms`), the queue into the producer, its flush
/// (`kafka.flush_timeout_ms`), the purge into the spool and its fsync, then the admin listener's
/// own graceful stop (`http.shutdown_grace_ms` again).
fn edge_drain(c: &Config) -> Duration {
    Duration::from_millis(2 * c.http.shutdown_grace_ms + c.kafka.flush_timeout_ms)
}

/// The sink's drain after SIGTERM (sink/src/consumer.rs): the write in flight, then the batch in
/// hand, each given up `retry.shutdown_timeout_ms` after the stop (retries and an insert still
/// running included).
fn sink_drain(c: &SinkConfig) -> Duration {
    Duration::from_millis(2 * c.retry.shutdown_timeout_ms)
}

/// Kubernetes sends SIGTERM once preStop has finished and SIGKILL once the grace period (which
/// counts from the start of preStop) is over: the grace period covers both, with room.
fn check_grace(objects: &[Value]) {
    let edge_w = service_workload(objects, "pixelpipe-ingest");
    let edge_c = container_of(edge_w, "pixelpipe-ingest");
    let edge = run_of(objects, edge_w, edge_c).edge();
    let pause = pre_stop(edge_c);
    assert!(
        pause > Duration::ZERO,
        "a pause for the endpoints to update"
    );
    let needed = pause + edge_drain(&edge) + UNBOUNDED_DRAIN;
    assert!(
        grace(edge_w) >= needed,
        "{}: terminationGracePeriodSeconds {:?} < preStop {pause:?} + drain {:?} + {UNBOUNDED_DRAIN:?}",
        name(edge_w),
        grace(edge_w),
        edge_drain(&edge)
    );
    let sink_w = service_workload(objects, "pixelpipe-sink");
    let sink = run_of(objects, sink_w, container_of(sink_w, "pixelpipe-sink")).sink();
    assert!(
        grace(sink_w) >= sink_drain(&sink) + UNBOUNDED_DRAIN,
        "{}: terminationGracePeriodSeconds {:?} < drain {:?} + {UNBOUNDED_DRAIN:?}",
        name(sink_w),
        grace(sink_w),
        sink_drain(&sink)
    );
}

/// A sink beyond the partition count idles: replicas, and replicas during a rollout, stay within
/// the partitions the manifests assume (one annotation); the schema is migrated once, by a Job
/// with the sinks' own configuration, when the sinks do not migrate at start.
fn check_sinks(objects: &[Value]) {
    let w = service_workload(objects, "pixelpipe-sink");
    let partitions: u64 = text(
        &w["metadata"]["annotations"]["pixelpipe/hits-topic-partitions"],
        "the partition count the manifests assume",
    )
    .parse()
    .unwrap();
    let replicas = w["spec"]["replicas"].as_u64().unwrap();
    let surge = &w["spec"]["strategy"]["rollingUpdate"]["maxSurge"];
    let surge = match surge {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(p) => {
            let percent: u64 = p.strip_suffix('%').unwrap().parse().unwrap();
            (replicas * percent).div_ceil(100)
        }
        // Kubernetes' default, 25 %.
        _ => replicas.div_ceil(4),
    };
    assert!(
        replicas + surge <= partitions,
        "{replicas} sinks + {surge} surging > {partitions} partitions"
    );
    let run = run_of(objects, w, container_of(w, "pixelpipe-sink"));
    if !run.sink().clickhouse.migrate_on_start {
        let migrators: Vec<Run> = workloads(objects)
            .into_iter()
            .filter(|j| kind(j) == "Job")
            .flat_map(|j| containers(j).into_iter().map(move |c| (j, c)))
            .map(|(j, c)| run_of(objects, j, c))
            .filter(|r| r.program == "pixelpipe-sink" && r.args == ["migrate"])
            .collect();
        assert_eq!(migrators.len(), 1, "one Job migrates");
        assert_eq!(
            migrators[0].config_text, run.config_text,
            "with the sinks' configuration"
        );
        assert!(same(&migrators[0].load(), &run.load()));
    }
}

/// Every container runs the image the compose file builds, pinned to a version.
fn check_images(objects: &[Value]) {
    let compose = read_docs(&repo().join("deploy/compose/docker-compose.yml")).remove(0);
    let image = text(&compose["x-pixelpipe"]["image"], "the compose file's image");
    let (_, tag) = image.rsplit_once(':').unwrap();
    assert!(
        tag.starts_with(|c: char| c.is_ascii_digit()),
        "{image}: pin a version"
    );
    let mut seen = 0;
    for w in workloads(objects) {
        for c in containers(w) {
            assert_eq!(c["image"], image, "{}", name(w));
            seen += 1;
        }
    }
    assert!(seen >= 3);
}

/// The disruption budgets each select one workload's pods; a StatefulSet's governing Service is
/// a headless Service selecting its pods.
fn check_selectors(objects: &[Value]) {
    let budgets: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "PodDisruptionBudget")
        .collect();
    assert_eq!(
        budgets.len(),
        2,
        "one budget for the edges, one for the sinks"
    );
    for b in budgets {
        let selected: Vec<&Value> = workloads(objects)
            .into_iter()
            .filter(|w| kind(w) != "Job")
            .filter(|w| {
                labels_match(
                    &b["spec"]["selector"]["matchLabels"],
                    &w["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(selected.len(), 1, "budget {}", name(b));
        assert_eq!(name(b), name(selected[0]));
    }
    for w in workloads(objects) {
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        if kind(w) != "Job" {
            assert!(
                labels_match(&w["spec"]["selector"]["matchLabels"], labels),
                "{}",
                name(w)
            );
        }
        if kind(w) == "StatefulSet" {
            let s = find(
                objects,
                "Service",
                text(&w["spec"]["serviceName"], "serviceName"),
            )
            .unwrap_or_else(|| panic!("{}: no governing Service", name(w)));
            assert_eq!(s["spec"]["clusterIP"], "None", "headless");
            assert!(labels_match(&s["spec"]["selector"], labels));
        }
    }
}

/// The autoscaler drives the edges' workload, which leaves its replica count to it, by CPU
/// relative to a request the edge has.
fn check_autoscaler(objects: &[Value]) -> &Value {
    let hpa: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "HorizontalPodAutoscaler")
        .collect();
    assert_eq!(hpa.len(), 1);
    let target = &hpa[0]["spec"]["scaleTargetRef"];
    let edge = service_workload(objects, "pixelpipe-ingest");
    assert_eq!(target["apiVersion"], edge["apiVersion"]);
    assert_eq!(target["kind"], edge["kind"]);
    assert_eq!(target["name"], name(edge));
    assert!(
        edge["spec"].get("replicas").is_none(),
        "the autoscaler owns the count"
    );
    let metrics = hpa[0]["spec"]["metrics"].as_array().unwrap();
    for m in metrics {
        let resource = text(&m["resource"]["name"], "metric");
        for c in containers(edge) {
            assert!(
                c["resources"]["requests"][resource].is_string(),
                "{resource} request"
            );
        }
    }
    assert!(
        hpa[0]["spec"]["minReplicas"].as_u64().unwrap() >= 2,
        "one edge can stop"
    );
    // During a Kafka outage the edges are unready and idle, and their spools hold what they
    // answered meanwhile: an autoscaler that scales down would remove edges, spools and all.
    assert_eq!(
        hpa[0]["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Disabled",
        "the autoscaler only adds edges"
    );
    hpa[0]
}

/// Pods run as the image's user, never root, with a read-only root, no capabilities and no API
/// token; the edge's spool directory is on a writable volume that holds twice `spool.max_bytes`
/// (what a long outage can take it to), and its memory limit holds what the producer may keep
/// while Kafka is away (docs/operations.md#memory).
fn check_security(objects: &[Value]) {
    let dockerfile = read(&repo().join("deploy/docker/Dockerfile"));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    for w in workloads(objects) {
        let p = pod(w);
        assert_eq!(p["securityContext"]["runAsNonRoot"], true, "{}", name(w));
        assert_eq!(p["securityContext"]["runAsUser"], user, "{}", name(w));
        assert_eq!(p["automountServiceAccountToken"], false, "{}", name(w));
        for c in containers(w) {
            let s = &c["securityContext"];
            assert_eq!(s["allowPrivilegeEscalation"], false, "{}", name(w));
            assert_eq!(s["readOnlyRootFilesystem"], true, "{}", name(w));
            assert_eq!(s["capabilities"]["drop"], json!(["ALL"]), "{}", name(w));
        }
    }
    let w = service_workload(objects, "pixelpipe-ingest");
    let c = container_of(w, "pixelpipe-ingest");
    let edge = run_of(objects, w, c).edge();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            edge.spool
                .dir
                .starts_with(text(&m["mountPath"], "mountPath"))
        })
        .max_by_key(|m| text(&m["mountPath"], "mountPath").len())
        .unwrap_or_else(|| panic!("spool.dir {} is on no volume", edge.spool.dir.display()));
    assert_ne!(mount["readOnly"], true);
    let volume = pod(w)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"]);
    let capacity = match volume {
        Some(v) => quantity(&v["emptyDir"]["sizeLimit"]),
        None => {
            let claim = w["spec"]["volumeClaimTemplates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["metadata"]["name"] == mount["name"])
                .unwrap();
            quantity(&claim["spec"]["resources"]["requests"]["storage"])
        }
    };
    assert!(
        capacity >= 2 * edge.spool.max_bytes,
        "{}: the spool's volume holds {capacity} bytes, under twice spool.max_bytes",
        name(w)
    );
    // A few hundred bytes per hit waiting in the channel: 512.
    let memory = (30 << 20)
        + edge.kafka.buffer_max_kbytes as u64 * 1024 * 3 / 2
        + edge.queue.capacity_hits as u64 * 512;
    let limit = quantity(&c["resources"]["limits"]["memory"]);
    assert!(
        limit >= memory,
        "{}: memory limit {limit} < {memory}",
        name(w)
    );
    assert_eq!(
        c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"],
        "an edge killed for memory loses what it holds"
    );
}

/// No edge believes X-Forwarded-For (or the header it is told) from the whole internet: of one
/// address in each IPv4 /8 and each IPv6 /4, at most two are trusted peers.
fn check_trust(objects: &[Value]) {
    let w = service_workload(objects, "pixelpipe-ingest");
    let edge = run_of(objects, w, container_of(w, "pixelpipe-ingest")).edge();
    let trusted =
        TrustedProxies::parse(&edge.http.trusted_proxies, edge.http.client_ip_header).unwrap();
    let client: IpAddr = [198, 51, 100, 7].into();
    let mut headers = hyper::HeaderMap::new();
    headers.insert("x-forwarded-for", client.to_string().parse().unwrap());
    headers.insert("forwarded", format!("for={client}").parse().unwrap());
    headers.insert("x-real-ip", client.to_string().parse().unwrap());
    let believed = |peers: Vec<IpAddr>| {
        peers
            .into_iter()
            .filter(|&peer| trusted.client_ip(peer, &headers) != Some(peer))
            .count()
    };
    let v4 = believed((1..=223u8).map(|a| IpAddr::from([a, 1, 2, 3])).collect());
    assert!(
        v4 <= 2,
        "{:?} trusts {v4} of 223 /8s",
        edge.http.trusted_proxies
    );
    let v6 = believed(
        (1..16u16)
            .map(|a| IpAddr::from([a << 12, 1, 2, 3, 4, 5, 6, 7]))
            .collect(),
    );
    assert!(
        v6 <= 2,
        "{:?} trusts {v6} of 15 IPv6 /4s",
        edge.http.trusted_proxies
    );
}

fn check_all(objects: &[Value]) {
    check_settings(objects);
    check_ports(objects);
    check_grace(objects);
    check_sinks(objects);
    check_images(objects);
    check_selectors(objects);
    check_security(objects);
    check_trust(objects);
}

// ---- tests that need nothing installed ----

#[test]
fn each_kustomization_lists_every_file_beside_it_and_nothing_missing() {
    for dir in [base_dir(), overlay_dir()] {
        let k = kustomization(&dir);
        let mut listed: Vec<PathBuf> = k.resource_files();
        for r in &k.resources {
            let p = dir.join(r);
            assert!(p.exists(), "{}: {r} is missing", dir.display());
            if p.is_dir() {
                assert!(p.join("kustomization.yaml").exists(), "{r}");
            }
        }
        listed.extend(k.patches.iter().map(|p| dir.join(p)));
        listed.extend(
            k.config_maps
                .iter()
                .flat_map(|(_, f)| f.iter().map(|f| dir.join(f))),
        );
        for p in &listed {
            assert!(p.exists(), "{} is listed but missing", p.display());
        }
        // The secrets' env files are the operator's, never in the repository; their examples are.
        for env in k.secrets.iter().flat_map(|(_, e)| e) {
            let path = dir.join(env);
            let relative = path.strip_prefix(repo()).unwrap().to_owned();
            let ignored = Command::new("git")
                .arg("-C")
                .arg(repo())
                .args(["check-ignore", "-q", "--no-index"])
                .arg(&relative)
                .status()
                .unwrap();
            assert!(
                ignored.success(),
                "{} must be git-ignored",
                relative.display()
            );
            assert!(example_of(&path).exists(), "{}.example", relative.display());
            listed.push(path.clone());
            listed.push(example_of(&path));
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && path.file_name().unwrap() != "kustomization.yaml" {
                assert!(
                    listed.contains(&path),
                    "{} is in no kustomization",
                    path.display()
                );
            }
        }
    }
    // Every secret a pod names is in the example, and every key of the example is used.
    let objects = base_objects();
    let mut named: Vec<(String, String)> = Vec::new();
    for w in workloads(&objects) {
        for c in containers(w) {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
                    named.push((
                        text(&s["name"], "secret").into(),
                        text(&s["key"], "key").into(),
                    ));
                }
            }
        }
    }
    let k = kustomization(&base_dir());
    for (secret, envs) in &k.secrets {
        let keys: Vec<String> = envs
            .iter()
            .flat_map(|e| env_file(&example_of(&base_dir().join(e))))
            .map(|(k, _)| k)
            .collect();
        for key in &keys {
            assert!(
                named.contains(&(secret.clone(), key.clone())),
                "{key} is used by no pod"
            );
        }
        for (s, key) in named.iter().filter(|(s, _)| s == secret) {
            assert!(keys.contains(key), "{s}: {key} is not in the example");
        }
    }
}

#[test]
fn every_variable_the_pods_get_is_a_setting_that_counts() {
    check_settings(&base_objects());
    check_settings(&overlay_objects());
}

#[test]
fn container_ports_probes_and_services_are_the_configured_listeners() {
    check_ports(&base_objects());
    check_ports(&overlay_objects());
}

#[test]
fn grace_periods_outlast_the_pause_and_the_drain() {
    check_grace(&base_objects());
    check_grace(&overlay_objects());
}

#[test]
fn sinks_never_outnumber_the_partitions_and_one_job_migrates() {
    check_sinks(&base_objects());
    check_sinks(&overlay_objects());
}

#[test]
fn every_pod_runs_the_image_compose_builds() {
    check_images(&base_objects());
    check_images(&overlay_objects());
}

#[test]
fn the_autoscaler_budgets_and_services_select_the_right_pods() {
    let base = base_objects();
    check_selectors(&base);
    let hpa = check_autoscaler(&base);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    check_selectors(&overlay_objects());
}

#[test]
fn the_overlay_autoscaler_drives_the_statefulset_and_only_up() {
    let overlay = kustomization(&overlay_dir());
    let objects = overlay_objects();
    let set = service_workload(&objects, "pixelpipe-ingest");
    assert_eq!(kind(set), "StatefulSet");
    let patches: Vec<Value> = overlay
        .patches
        .iter()
        .flat_map(|p| read_docs(&overlay.dir.join(p)))
        .filter(|d| kind(d) == "HorizontalPodAutoscaler")
        .collect();
    assert_eq!(patches.len(), 1);
    let target = &patches[0]["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"], set["apiVersion"]);
    assert_eq!(target["kind"], "StatefulSet");
    assert_eq!(target["name"], name(set));
    assert!(find(&objects, "HorizontalPodAutoscaler", name(&patches[0])).is_some());
    assert_eq!(
        patches[0]["spec"]["behavior"]["scaleDown"]["selectPolicy"],
        "Disabled"
    );
}

#[test]
fn pods_run_unprivileged_with_room_for_the_spool() {
    check_security(&base_objects());
    check_security(&overlay_objects());
}

#[test]
fn the_edge_trusts_no_catch_all_proxy_range() {
    check_trust(&base_objects());
    check_trust(&overlay_objects());
}

/// The overlay's StatefulSet runs the base Deployment's pod, differing only in the spool (a claim
/// of its own instead of an emptyDir and the ephemeral storage asked for it) and the durability
/// it exists for.
#[test]
fn the_statefulset_runs_the_deployments_pod_with_a_disk_spool() {
    let base = base_objects();
    let overlay = overlay_objects();
    let deployment = service_workload(&base, "pixelpipe-ingest");
    let set = service_workload(&overlay, "pixelpipe-ingest");
    assert_eq!((kind(deployment), kind(set)), ("Deployment", "StatefulSet"));
    assert_eq!(
        name(deployment),
        name(set),
        "the Service, budget and autoscaler find it"
    );
    let claims: Vec<&str> = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(name)
        .collect();
    assert!(!claims.is_empty());
    let mut from_deployment = deployment["spec"]["template"].clone();
    let volumes = from_deployment["spec"]["volumes"].as_array_mut().unwrap();
    let before = volumes.len();
    volumes.retain(|v| !claims.contains(&v["name"].as_str().unwrap()));
    assert_eq!(
        volumes.len() + claims.len(),
        before,
        "each claim replaces a volume"
    );
    // The emptyDir's room on the node's disk goes with it.
    for side in ["requests", "limits"] {
        from_deployment["spec"]["containers"][0]["resources"][side]
            .as_object_mut()
            .unwrap()
            .remove("ephemeral-storage");
    }
    let mut from_set = set["spec"]["template"].clone();
    let env = from_set["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap();
    env.retain(|e| e["name"] != "PIXELPIPE_SPOOL__DURABILITY");
    assert_eq!(from_set, from_deployment);

    let run = |objects: &[Value], w: &Value| {
        run_of(objects, w, container_of(w, "pixelpipe-ingest")).edge()
    };
    assert_eq!(run(&base, deployment).spool.durability, Durability::Memory);
    assert_eq!(run(&overlay, set).spool.durability, Durability::Disk);
}

/// One port nothing listens on, for a broker or a server that must be unreachable.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over a fresh connection; (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    // The pixel's body is a GIF.
    let out = String::from_utf8_lossy(&bytes);
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The address after `key=Some(` in a log line.
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let start = line.find(&format!("{key}=Some(")).unwrap() + key.len() + 6;
    let end = start + line[start..].find(')').unwrap();
    line[start..end].parse().unwrap()
}

fn logged_count(log: &str, key: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("edge stopped")).unwrap();
    let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The real edge binary, started as the pod starts it (its arguments, the ConfigMap's file, the
/// pod's environment and nothing else), with its listeners on loopback and Kafka unreachable:
/// the probes' paths are served on the port the probes name, readiness says Kafka is away while
/// liveness does not fail for it, and after SIGTERM the edge spools what Kafka did not take and
/// exits within the time the grace period leaves after the preStop pause.
#[test]
fn the_edge_serves_its_probes_and_drains_within_its_grace_period() {
    let objects = base_objects();
    let w = service_workload(&objects, "pixelpipe-ingest");
    let c = container_of(w, "pixelpipe-ingest");
    let run = run_of(&objects, w, c);
    let config = run.edge();
    let readiness = text(&c["readinessProbe"]["httpGet"]["path"], "readiness path");
    let liveness = text(&c["livenessProbe"]["httpGet"]["path"], "liveness path");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container_port(c, &c[probe]["httpGet"]["port"]),
            config.http.listen_addr.port(),
            "{probe} is on the public listener"
        );
    }
    let metrics_path = text(
        &w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        "metrics path",
    );

    let dir = scratch("edge");
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("ingest.toml");
    std::fs::write(&config_file, &run.config_text).unwrap();
    let args: Vec<String> = strings(&c["args"])
        .into_iter()
        .map(|a| {
            if a == run.config_path {
                config_file.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixelpipe-ingest"))
        .env_clear()
        .envs(run.env.iter().cloned())
        .env("PIXELPIPE_LOG", "info")
        .args(&args)
        .args(["--set", "http.listen_addr=127.0.0.1:0"])
        .args(["--set", "admin.listen_addr=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("spool.dir={}", dir.join("spool").display()))
        .arg("--set")
        .arg(format!("kafka.brokers=127.0.0.1:{}", closed_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let serving = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("edge serving") => break line,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("the edge did not start ({e}):\n{}", reader.join().unwrap());
            }
        }
    };
    let public = logged_addr(&serving, "public");
    let admin = logged_addr(&serving, "admin");

    let (status, body) = get(public, readiness);
    assert_eq!(status, 503, "{readiness} while Kafka is away: {body}");
    assert!(body.contains("kafka not connected"), "{body}");
    assert_eq!(
        get(public, liveness).0,
        200,
        "{liveness} while Kafka is away"
    );
    assert_eq!(
        get(admin, metrics_path).0,
        200,
        "{metrics_path} on the admin port"
    );
    assert_eq!(
        get(admin, readiness).0,
        404,
        "the probes are not on the admin port"
    );
    let pixels = 5;
    for i in 0..pixels {
        let (status, _) = get(public, &format!("/p.gif?site=k8s.example&e=open&msg=m-{i}"));
        assert_eq!(status, 200);
    }

    let budget = grace(w) - pre_stop(c);
    let stopping = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > budget {
            let _ = child.kill();
            panic!("the edge was still draining after {budget:?}, when Kubernetes kills it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let drained = stopping.elapsed();
    let log = reader.join().unwrap();
    println!("drained in {drained:?} of the {budget:?} left after preStop:\n{log}");
    assert!(exit.success(), "{exit}:\n{log}");
    assert!(logged_count(&log, "spooled") >= pixels, "{log}");
    assert_eq!(logged_count(&log, "dropped"), 0, "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The sink's probes, on its admin listener, answer while ClickHouse and Kafka are away (the
/// sink waits them out), and the sink stops on the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_answers_its_probes_while_clickhouse_and_kafka_are_away() {
    let objects = base_objects();
    let w = service_workload(&objects, "pixelpipe-sink");
    let c = container_of(w, "pixelpipe-sink");
    let run = run_of(&objects, w, c);
    let closed = closed_port();
    let clickhouse = format!("http://127.0.0.1:{closed}");
    let kafka = format!("127.0.0.1:{closed}");
    let config = match run
        .load_with(
            &run.env,
            &[("clickhouse.url", &clickhouse), ("kafka.brokers", &kafka)],
        )
        .unwrap()
    {
        Loaded::Sink(c) => *c,
        Loaded::Edge(_) => unreachable!(),
    };
    let admin = pixelpipe_common::http::bind("127.0.0.1:0".parse().unwrap(), 1, "admin")
        .unwrap()
        .remove(0);
    let addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(pixelpipe_sink::run(config.clone(), admin, async move {
        let _ = stopped.await;
    }));
    let mut paths = Vec::new();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container_port(c, &c[probe]["httpGet"]["port"]),
            config.admin.listen_addr.port()
        );
        paths.push((probe, &c[probe]["httpGet"]["path"]));
    }
    let annotations = &w["spec"]["template"]["metadata"]["annotations"];
    paths.push(("prometheus.io/path", &annotations["prometheus.io/path"]));
    for (what, path) in paths {
        let path = text(path, what).to_owned();
        let (status, body) = tokio::task::spawn_blocking(move || get(addr, &path))
            .await
            .unwrap();
        assert_eq!(status, 200, "{what}: {body}");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(grace(w), sink)
        .await
        .expect("the sink stops within its grace period")
        .unwrap()
        .unwrap();
}

// ---- with kustomize and kubernetes-validate ----

fn tool(var: &str, under_tools_dir: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap();
        format!("{home}/.cache/pixelpipe/{under_tools_dir}")
    })
}

fn copy_tree(from: &Path, to: &Path, skip: &[PathBuf]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if skip.contains(&path) {
            continue;
        } else if path.is_dir() {
            copy_tree(&path, &target, skip);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `kubectl kustomize DIR`: (success, stdout and stderr).
fn kustomize(kubectl: &str, dir: &Path) -> (bool, String, String) {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{kubectl}: {e} (deploy/local/kubectl.sh install)"));
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs kubectl and kubernetes-validate: deploy/local/test.sh installs them"
)]
fn the_rendered_manifests_pass_kubernetes_validate_and_agree_with_the_code() {
    let kubectl = tool("TEST_KUBECTL", "kubectl-1.37.1/bin/kubectl");
    let validate = tool(
        "TEST_KUBERNETES_VALIDATE",
        "kubernetes-validate-1.37.0/kubernetes-validate",
    );
    let base = kustomization(&base_dir());
    let overlay = kustomization(&overlay_dir());
    let secret_files: Vec<PathBuf> = base
        .secrets
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| base_dir().join(e)))
        .collect();
    let work = scratch("render");
    // A checkout's own secrets.env (git-ignored) stays behind: the copy has only the examples.
    copy_tree(&k8s_dir(), &work, &secret_files);
    let copy = |p: &Path| work.join(p.strip_prefix(k8s_dir()).unwrap());

    let (ok, _, refused) = kustomize(&kubectl, &copy(&base_dir()));
    assert!(
        !ok && refused.contains("secrets.env"),
        "renders without secrets: {refused}"
    );
    for file in &secret_files {
        std::fs::copy(example_of(file), copy(file)).unwrap();
    }
    let mut rendered = Vec::new();
    for dir in [base_dir(), overlay_dir()] {
        let (ok, yaml, err) = kustomize(&kubectl, &copy(&dir));
        assert!(ok, "kubectl kustomize {}: {err}", dir.display());
        let file = work.join(format!(
            "{}.rendered.yaml",
            dir.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, &yaml).unwrap();
        rendered.push((file, yaml_docs(&yaml, &dir.display().to_string())));
    }

    // Each rendered set, and each manifest file as written.
    let mut files: Vec<PathBuf> = rendered.iter().map(|(f, _)| f.clone()).collect();
    files.extend(base.resource_files());
    files.extend(overlay.resource_files());
    let out = Command::new(&validate)
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!("{validate}: {e} (deploy/local/kubernetes-validate.sh install)")
        });
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (base_objects, overlay_objects) = (&rendered[0].1, &rendered[1].1);
    for objects in [base_objects, overlay_objects] {
        check_all(objects);
        check_autoscaler(objects);
        // The generated ConfigMaps carry the files the other tests read.
        for (generator, files) in &base.config_maps {
            let map = objects
                .iter()
                .find(|o| kind(o) == "ConfigMap" && name(o).starts_with(&format!("{generator}-")))
                .unwrap_or_else(|| panic!("no ConfigMap {generator}"));
            for f in files {
                assert_eq!(map["data"][f], read(&base_dir().join(f)), "{f}");
            }
        }
    }
    // What the overlay changes: the edges are a StatefulSet that spools to disk, scaled only up.
    let edge = |objects: &[Value]| {
        let w = service_workload(objects, "pixelpipe-ingest");
        (
            kind(w).to_owned(),
            run_of(objects, w, container_of(w, "pixelpipe-ingest")).edge(),
        )
    };
    let (base_kind, base_edge) = edge(base_objects);
    let (overlay_kind, overlay_edge) = edge(overlay_objects);
    assert_eq!(
        (base_kind.as_str(), overlay_kind.as_str()),
        ("Deployment", "StatefulSet")
    );
    assert_eq!(base_edge.spool.durability, Durability::Memory);
    assert_eq!(overlay_edge.spool.durability, Durability::Disk);
    let hpa = check_autoscaler(overlay_objects);
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"],
        "Disabled"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
