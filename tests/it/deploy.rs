//! The container and Kubernetes files, checked without pulling an image: the manifests
//! parse and wire what production needs (2 replicas, gRPC probes on service "", non-root
//! read-only container without capabilities, the TLS secret, the metrics port, a PDB), and
//! the container's own arguments and environment pass `serve --check-config` with test
//! certificates in place of the mounted ones.

use crate::support::certs;

use serde::Deserialize;
use serde_norway::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");

fn manifests() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/gateway.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn manifests_wire_probes_security_tls_and_metrics() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    // The kubelet's gRPC probe has no TLS: with --tls-cert on the API, the probes must go
    // to the plaintext --health-listen port.
    assert!(args.iter().any(|a| a.starts_with("--tls-cert=")));
    let health_port: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--health-listen="))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("--health-listen is set");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["grpc"]["service"].as_str(),
            Some(""),
            "{probe}"
        );
        assert_eq!(
            container[probe]["grpc"]["port"].as_u64(),
            Some(health_port),
            "{probe}"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    assert_eq!(args[0], "serve");
    let ports: Vec<(String, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("grpc".into(), 50051)));
    assert!(ports.contains(&("metrics".into(), 9090)));
    assert!(args.contains(&"--metrics-listen=0.0.0.0:9090".to_string()));
    // The TLS secret is mounted where --tls-cert and --tls-key look.
    let tls_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("tls"))
        .expect("tls volume mounted");
    let mount = tls_mount["mountPath"].as_str().unwrap();
    assert!(
        args.contains(&format!("--tls-cert={mount}/tls.crt")),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--tls-key={mount}/tls.key")),
        "{args:?}"
    );
    let secret = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("tls"))
        .unwrap();
    assert!(secret["secret"]["secretName"].is_string());

    let service = kind(&docs, "Service");
    let service_ports: Vec<&str> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(service_ports, ["grpc", "metrics"]);
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
}

#[test]
fn the_containers_arguments_pass_check_config() {
    let docs = manifests();
    let container = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    // Test certificates stand in for the mounted Secret and ConfigMap.
    let dir = certs::TempDir::new("deploy");
    let ca = certs::Ca::new("deploy CA");
    let leaf = ca.server("gateway");
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::create_dir_all(dir.path().join("gws-ca")).unwrap();
    dir.write("tls/tls.crt", &leaf.cert_pem);
    dir.write("tls/tls.key", &leaf.key_pem);
    dir.write("gws-ca/ca.crt", &ca.pem);
    let root = dir.path().to_string_lossy().into_owned();
    let local = |s: &str| s.replace("/etc/gateway", &root);

    let args: Vec<String> = strings(&container["args"])
        .iter()
        .map(|a| local(a))
        .collect();
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                local(e["value"].as_str().unwrap()),
            )
        })
        .collect();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(&args)
            .args(extra)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let out = run(&["--check-config"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // And the check is real: without the mounted files it refuses.
    std::fs::remove_file(dir.path().join("tls/tls.key")).unwrap();
    let out = run(&["--check-config"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked --no-default-features"));
    assert!(
        text.contains("COPY crates ./crates"),
        "the workspace's crates are built too"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("USER ") && !l.contains(" 0") && !l.contains("root"))
    );
    assert!(text.contains("EXPOSE 50051 9090"));
    assert!(text.contains(r#"CMD ["serve"]"#));
}
