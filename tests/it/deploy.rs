//! The deployment files under `deploy/` agree with the code.
//!
//! They are read, never applied: Kubernetes manifests and alert rules are
//! parsed as YAML, the dashboard as JSON, the systemd unit and the Dockerfile
//! line by line. Metric names are checked against `events::METRICS` and
//! setting names against the real config loader, so renaming a metric or a
//! key fails here rather than on a dashboard or at a pod's start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gmail_ingest::config::{Settings, known_keys};
use gmail_ingest::events::METRICS;
use serde_norway::Value;

// ---------------------------------------------------------------------------
// Helpers.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let path = repo().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML file in {dir}");
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("UTF-8 file name")
}

/// Every non-empty document of a (multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every Kubernetes object in `deploy/kubernetes` (the kustomization excepted).
fn kubernetes_objects() -> Vec<Value> {
    yaml_files("deploy/kubernetes")
        .iter()
        .filter(|p| file_name(p) != "kustomization.yaml")
        .flat_map(|p| documents(p))
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

/// A file mode as Kubernetes reads it: YAML 1.1 takes `0400` as octal, while
/// serde_norway (YAML 1.2) keeps it as the string "0400".
fn file_mode(v: &Value) -> u32 {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("a small mode"),
        Value::String(s) if s.starts_with('0') => u32::from_str_radix(s, 8).expect("an octal mode"),
        other => panic!("not a file mode: {other:?}"),
    }
}

/// The pod template's spec of a Deployment or Job.
fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// Init containers and containers of a pod spec.
fn all_containers(pod: &Value) -> Vec<&Value> {
    seq(&pod["initContainers"])
        .iter()
        .chain(seq(&pod["containers"]))
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    seq(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container named {name}"))
}

/// `(name, value)` of the plain-valued environment variables of a container.
fn env_vars(container: &Value) -> Vec<(String, String)> {
    seq(&container["env"])
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// `http.shutdown_grace` of a deployment config file, loaded for real.
fn shutdown_grace(config_rel: &str, env: &[(String, String)]) -> Duration {
    load_settings(config_rel, env).http.shutdown_grace
}

/// Loads a config file the way the binary does: built-in defaults, the file,
/// then the given environment, with every strictness check.
fn load_settings(config_rel: &str, env: &[(String, String)]) -> Settings {
    let empty_config_dir = tempfile::tempdir().expect("temporary directory");
    Settings::load_from(empty_config_dir.path(), Some(&repo().join(config_rel)), env)
        .unwrap_or_else(|e| panic!("{config_rel} does not load: {e:#}"))
}

/// Metric names of this crate, as exported.
fn metric_names() -> BTreeSet<&'static str> {
    METRICS.iter().map(|(name, _)| *name).collect()
}

/// The `gmail_ingest_*` metric names a PromQL expression mentions, with the
/// histogram suffixes removed.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        if token.starts_with("gmail_ingest_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| token.strip_suffix(s))
                .unwrap_or(&token);
            out.insert(base.to_owned());
        }
        token.clear();
    }
    out
}

/// Asserts every metric an expression names is exported, and that it names
/// at least one of ours (or one of `allowed_foreign`).
fn assert_known_metrics(expr: &str, allowed_foreign: &[&str], context: &str) {
    let known = metric_names();
    let used = metrics_in(expr);
    for m in &used {
        assert!(
            known.contains(m.as_str()),
            "{context}: metric {m} is not in events::METRICS (renamed or misspelt?) in: {expr}"
        );
    }
    assert!(
        !used.is_empty() || allowed_foreign.iter().any(|f| expr.contains(f)),
        "{context}: the expression names none of our metrics: {expr}"
    );
}

/// A systemd unit as `(section, key) -> values`, in file order.
fn systemd_unit(rel: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(rel).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not key=value: {line}"));
        out.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    out
}

// ---------------------------------------------------------------------------
// Kubernetes and Prometheus manifests.

#[test]
fn every_kubernetes_and_prometheus_document_has_an_api_version_a_kind_and_a_name() {
    let mut checked = 0;
    for path in yaml_files("deploy/kubernetes")
        .into_iter()
        .chain(yaml_files("deploy/prometheus"))
    {
        if file_name(&path) == "kustomization.yaml" {
            continue;
        }
        let docs = documents(&path);
        assert!(!docs.is_empty(), "{} holds no document", path.display());
        for doc in docs {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: a document has no {field}",
                    path.display()
                );
            }
            assert!(
                doc["metadata"]["name"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{}: a {} has no metadata.name",
                path.display(),
                doc["kind"].as_str().unwrap_or("?")
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} documents found under deploy/");
}

#[test]
fn the_kustomization_lists_every_manifest_but_the_optional_migration_job() {
    let kustomization = documents(&repo().join("deploy/kubernetes/kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> = seq(&kustomization["resources"])
        .iter()
        .map(|r| str_of(r, "a resource").to_owned())
        .collect();
    let present: BTreeSet<String> = yaml_files("deploy/kubernetes")
        .iter()
        .map(|p| file_name(p).to_owned())
        .filter(|n| n != "kustomization.yaml" && n != "job-migrate.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources differ from the manifests present"
    );
    assert!(
        repo().join("deploy/kubernetes/job-migrate.yaml").is_file(),
        "the optional migration Job is missing"
    );

    // Generated ConfigMaps come from files that exist.
    let generated: Vec<&Value> = seq(&kustomization["configMapGenerator"])
        .iter()
        .flat_map(|g| seq(&g["files"]))
        .collect();
    assert!(
        !generated.is_empty(),
        "the config TOML is not generated into a ConfigMap"
    );
    for f in generated {
        let f = str_of(f, "a generator file");
        let local = f.split_once('=').map_or(f, |(_, path)| path);
        assert!(
            repo().join("deploy/kubernetes").join(local).is_file(),
            "configMapGenerator file {local} is missing"
        );
    }
}

#[test]
fn the_deployment_probes_liveness_and_readiness_on_the_http_port() {
    let objects = kubernetes_objects();
    let deployment = object(&objects, "Deployment", "gmail-ingest");
    let daemon = container(pod_spec(deployment), "gmail-ingest");

    let http = seq(&daemon["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a container port named http");
    assert_eq!(http["containerPort"].as_u64(), Some(9090));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &daemon[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(get["port"].as_str(), Some("http"), "{probe} port");
    }
    let args: Vec<&str> = seq(&daemon["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["--config", "/etc/gmail-ingest/config.toml", "run"]);
}

#[test]
fn every_workload_runs_non_root_read_only_without_capabilities_and_with_limits() {
    let objects = kubernetes_objects();
    let workloads: Vec<&Value> = objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "Job")))
        .collect();
    assert!(
        workloads.len() >= 2,
        "expected the Deployment and the migration Job"
    );
    for workload in workloads {
        let name = workload["metadata"]["name"].as_str().unwrap_or("?");
        let pod = pod_spec(workload);
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}: pod runAsNonRoot"
        );
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_u64(),
            Some(65532),
            "{name}: pod runAsUser"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{name}: seccomp profile"
        );
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{name}: service-account token"
        );
        for c in all_containers(pod) {
            let cname = c["name"].as_str().unwrap_or("?");
            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{name}/{cname}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{name}/{cname}: allowPrivilegeEscalation"
            );
            assert_ne!(
                sc["runAsNonRoot"].as_bool(),
                Some(false),
                "{name}/{cname}: runAsNonRoot overridden"
            );
            assert!(
                seq(&sc["capabilities"]["drop"])
                    .iter()
                    .any(|d| d.as_str() == Some("ALL")),
                "{name}/{cname}: capabilities are not all dropped"
            );
            for resource in ["cpu", "memory"] {
                assert!(
                    !c["resources"]["limits"][resource].is_null(),
                    "{name}/{cname}: no {resource} limit"
                );
                assert!(
                    !c["resources"]["requests"][resource].is_null(),
                    "{name}/{cname}: no {resource} request"
                );
            }
        }
    }
}

#[test]
fn the_service_account_key_is_mounted_read_only_and_never_group_readable() {
    let objects = kubernetes_objects();
    let deployment = object(&objects, "Deployment", "gmail-ingest");
    let pod = pod_spec(deployment);
    let volumes = seq(&pod["volumes"]);

    let secret_volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some("gmail-ingest-google"))
        .expect("a volume from Secret gmail-ingest-google");
    assert_eq!(
        file_mode(&secret_volume["secret"]["defaultMode"]),
        0o400,
        "key Secret defaultMode"
    );
    let secret_volume_name = str_of(&secret_volume["name"], "volume name");
    for c in all_containers(pod) {
        for m in seq(&c["volumeMounts"]) {
            if m["name"].as_str() == Some(secret_volume_name) {
                assert_eq!(
                    m["readOnly"].as_bool(),
                    Some(true),
                    "the key Secret is mounted writable"
                );
            }
        }
    }

    // The daemon's key file lies in a read-only mount.
    let daemon = container(pod, "gmail-ingest");
    let key_file = env_vars(daemon)
        .into_iter()
        .find(|(k, _)| k == "GMAIL_INGEST__GOOGLE__SERVICE_ACCOUNT_KEY_FILE")
        .map(|(_, v)| v)
        .expect("the daemon is told where the key is");
    assert_eq!(key_file, "/var/run/secrets/gmail-ingest/sa.json");
    let mount = seq(&daemon["volumeMounts"])
        .iter()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| key_file.starts_with(&format!("{p}/")))
        })
        .expect("a volume mounted over the key file's directory");
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "the key is mounted writable"
    );
}

#[test]
fn the_pods_get_longer_to_stop_than_the_daemon_takes_to_drain() {
    let objects = kubernetes_objects();
    let deployment = object(&objects, "Deployment", "gmail-ingest");
    let env = env_vars(container(pod_spec(deployment), "gmail-ingest"));
    let grace = shutdown_grace("deploy/kubernetes/config.toml", &env);
    let termination = pod_spec(deployment)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(termination) > grace,
        "terminationGracePeriodSeconds {termination} does not exceed http.shutdown_grace {grace:?}"
    );
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
}

#[test]
fn the_kubernetes_config_and_environment_load_with_the_real_settings_loader() {
    let objects = kubernetes_objects();
    for kind_name in [
        ("Deployment", "gmail-ingest"),
        ("Job", "gmail-ingest-migrate"),
    ] {
        let workload = object(&objects, kind_name.0, kind_name.1);
        for c in all_containers(pod_spec(workload)) {
            let env = env_vars(c);
            let settings = load_settings("deploy/kubernetes/config.toml", &env);
            assert!(
                settings.database.url.expose().starts_with("postgres"),
                "several replicas need PostgreSQL, not {}",
                settings.database.url
            );
        }
    }
}

#[test]
fn every_gmail_ingest_variable_in_the_deployment_files_names_a_real_setting() {
    let known = known_keys();
    let mut vars: Vec<(String, String)> = Vec::new();
    for o in kubernetes_objects() {
        if matches!(o["kind"].as_str(), Some("Deployment" | "Job")) {
            for c in all_containers(pod_spec(&o)) {
                for (k, _) in env_vars(c) {
                    vars.push((
                        k,
                        format!(
                            "{} {}",
                            o["kind"].as_str().unwrap_or("?"),
                            o["metadata"]["name"].as_str().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
    }
    for ((_, key), values) in systemd_unit("deploy/systemd/gmail-ingest.service") {
        if key == "Environment" {
            for v in values {
                let name = v.split_once('=').map_or(v.as_str(), |(n, _)| n).to_owned();
                vars.push((name, "gmail-ingest.service".to_owned()));
            }
        }
    }
    let ours: Vec<&(String, String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("GMAIL_INGEST__"))
        .collect();
    assert!(
        ours.len() >= 5,
        "expected the key file, listen address, log format and password file variables"
    );
    for (name, whence) in ours {
        let key = name
            .trim_start_matches("GMAIL_INGEST__")
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        assert!(
            known.contains(&key),
            "{whence}: {name} maps to no setting ({key}); the daemon would refuse to start"
        );
    }
}

#[test]
fn the_network_policy_restricts_ingress_and_egress() {
    let objects = kubernetes_objects();
    let policy = object(&objects, "NetworkPolicy", "gmail-ingest");
    let types: BTreeSet<&str> = seq(&policy["spec"]["policyTypes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]));

    let ports = |rules: &Value| -> BTreeSet<u64> {
        seq(rules)
            .iter()
            .flat_map(|r| seq(&r["ports"]))
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    assert_eq!(
        ports(&policy["spec"]["ingress"]),
        BTreeSet::from([9090]),
        "ingress only to the metrics port"
    );
    assert_eq!(
        ports(&policy["spec"]["egress"]),
        BTreeSet::from([53, 443, 5432]),
        "egress: DNS, HTTPS, PostgreSQL"
    );
    for rule in seq(&policy["spec"]["ingress"])
        .iter()
        .chain(seq(&policy["spec"]["egress"]))
    {
        assert!(
            !seq(&rule["ports"]).is_empty(),
            "a rule without ports allows every port"
        );
    }
}

#[test]
fn a_disruption_budget_keeps_one_replica_of_the_deployment() {
    let objects = kubernetes_objects();
    let pdb = object(&objects, "PodDisruptionBudget", "gmail-ingest");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    let pod_labels =
        &object(&objects, "Deployment", "gmail-ingest")["spec"]["template"]["metadata"]["labels"];
    let selector = pdb["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("PDB matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            &pod_labels[str_of(k, "label")],
            v,
            "the PDB selects no pod of the Deployment"
        );
    }
}

#[test]
fn the_service_monitor_scrapes_metrics_from_the_services_http_port() {
    let objects = kubernetes_objects();
    let monitor = object(&objects, "ServiceMonitor", "gmail-ingest");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let endpoint = &seq(&monitor["spec"]["endpoints"])[0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert_eq!(endpoint["port"].as_str(), Some("http"));
    assert_eq!(endpoint["interval"].as_str(), Some("30s"));

    let service = object(&objects, "Service", "gmail-ingest");
    assert!(
        seq(&service["spec"]["ports"])
            .iter()
            .any(|p| p["name"].as_str() == Some("http") && p["port"].as_u64() == Some(9090)),
        "the Service has no port 9090 named http"
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &service["metadata"]["labels"][str_of(k, "label")],
            v,
            "the ServiceMonitor selects no Service"
        );
    }
}

#[test]
fn the_alert_rules_query_only_metrics_that_exist() {
    let mut alerts = 0;
    for path in yaml_files("deploy/prometheus") {
        for doc in documents(&path) {
            for group in seq(&doc["spec"]["groups"]) {
                for rule in seq(&group["rules"]) {
                    let name = rule["alert"]
                        .as_str()
                        .or(rule["record"].as_str())
                        .unwrap_or("?");
                    let expr = str_of(&rule["expr"], "expr");
                    assert_known_metrics(expr, &["up{"], &format!("{}: {name}", path.display()));
                    if rule["alert"].is_string() {
                        assert!(
                            rule["labels"]["severity"].is_string(),
                            "{name} has no severity"
                        );
                        assert!(
                            rule["annotations"]["summary"].is_string(),
                            "{name} has no summary"
                        );
                        alerts += 1;
                    }
                }
            }
        }
    }
    assert!(alerts >= 6, "only {alerts} alerts found");
}

// ---------------------------------------------------------------------------
// Grafana.

#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/gmail-ingest.json"))
            .expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion below 36"
    );

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no ${{datasource}} Prometheus variable"
    );
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or("");
        assert_known_metrics(q, &[], &format!("variable {}", v["name"]));
    }

    // Panels, including those nested in collapsed rows.
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut exprs = 0;
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            assert_known_metrics(expr, &[], &format!("panel {title}"));
            used.extend(metrics_in(expr));
            exprs += 1;
        }
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {title} does not use the datasource variable"
            );
        }
    }
    assert!(exprs >= 15, "only {exprs} queries in the dashboard");
    let unused: Vec<&str> = metric_names()
        .into_iter()
        .filter(|m| !used.contains(*m))
        .collect();
    assert!(
        unused.is_empty(),
        "metrics missing from the dashboard: {unused:?}"
    );
}

// ---------------------------------------------------------------------------
// systemd and Docker.

#[test]
fn the_systemd_unit_is_hardened_and_reads_the_key_as_a_credential() {
    let unit = systemd_unit("deploy/systemd/gmail-ingest.service");
    let values = |key: &str| -> Vec<String> {
        unit.get(&("Service".to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default()
    };
    let one = |key: &str| -> String {
        let v = values(key);
        assert!(!v.is_empty(), "[Service] has no {key}=");
        v.last().cloned().unwrap_or_default()
    };

    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("CapabilityBoundingSet", ""),
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectory", "gmail-ingest"),
    ] {
        assert_eq!(one(key), expected, "[Service] {key}=");
    }
    assert!(
        !one("User").is_empty() || one("DynamicUser") == "yes",
        "the service has no dedicated user"
    );
    let families: BTreeSet<String> = one("RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        families,
        ["AF_INET", "AF_INET6", "AF_UNIX"].map(str::to_owned).into()
    );
    assert!(
        values("SystemCallFilter")
            .iter()
            .any(|v| v == "@system-service"),
        "no @system-service filter"
    );

    assert!(
        values("LoadCredential")
            .iter()
            .any(|v| v == "sa.json:/etc/gmail-ingest/sa.json"),
        "the key is not a credential"
    );
    assert!(
        values("Environment")
            .iter()
            .any(|v| v == "GMAIL_INGEST__GOOGLE__SERVICE_ACCOUNT_KEY_FILE=%d/sa.json"),
        "the daemon is not pointed at the credential (%d is the credentials directory)"
    );
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/gmail-ingest --config /etc/gmail-ingest/config.toml run"
    );

    let env: Vec<(String, String)> = values("Environment")
        .iter()
        .filter_map(|v| v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let grace = shutdown_grace("deploy/systemd/config.toml", &env);
    let stop: Duration = humantime::parse_duration(&one("TimeoutStopSec"))
        .or_else(|_| {
            one("TimeoutStopSec")
                .parse::<u64>()
                .map(Duration::from_secs)
        })
        .expect("TimeoutStopSec is a duration");
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} does not exceed http.shutdown_grace {grace:?}"
    );
    assert!(
        load_settings("deploy/systemd/config.toml", &env)
            .database
            .url
            .expose()
            .starts_with("sqlite:///var/lib/gmail-ingest/"),
        "the SQLite database is not in the unit's state directory"
    );
}

#[test]
fn the_container_image_runs_as_a_non_root_user() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let final_from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("a FROM instruction");
    let final_stage = &lines[final_from..];
    let instruction = |name: &str| -> Vec<&str> {
        final_stage
            .iter()
            .filter_map(|l| {
                let (word, rest) = l.split_once(char::is_whitespace)?;
                word.eq_ignore_ascii_case(name).then_some(rest.trim())
            })
            .collect()
    };
    let user = *instruction("USER")
        .last()
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "the final stage runs as {user}"
    );
    assert!(instruction("EXPOSE").iter().any(|p| {
        p.split_whitespace()
            .any(|p| p.trim_end_matches("/tcp") == "9090")
    }));
    assert_eq!(
        instruction("ENTRYPOINT").last().copied(),
        Some(r#"["/usr/local/bin/gmail-ingest"]"#)
    );
    assert!(
        lines[..final_from]
            .iter()
            .any(|l| l.contains("cargo build --profile dist --locked"))
    );
}
