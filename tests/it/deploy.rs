//! The container and Kubernetes files, checked without pulling an image: the manifests
//! parse and wire what production needs (3 replicas in cluster mode on a 3-node JetStream
//! NATS, a surge-first rolling update, gRPC probes on service "", non-root
//! read-only container without capabilities, the TLS secret, the metrics port, a PDB), and
//! the container's own arguments and environment pass `serve --check-config` with test
//! certificates in place of the mounted ones.

use crate::support::certs;
use crate::support::nats;

use serde::Deserialize;
use serde_norway::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");

fn manifests() -> Vec<Value> {
    manifest("gateway.yaml")
}

fn manifest(name: &str) -> Vec<Value> {
    let path = format!("{}/deploy/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
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
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    // A new pod is up before an old one stops: the stopping one hands its agents over.
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"].as_u64(), Some(0));
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
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(2));
    // Cluster mode: the NATS URLs, the secret from a Secret, three copies in JetStream.
    let env = &container["env"];
    let named = |name: &str| {
        env.as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let urls = named("GATEWAY_NATS_URL")["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    assert!(named("GATEWAY_CLUSTER_SECRET")["valueFrom"]["secretKeyRef"]["name"].is_string());
    assert!(args.contains(&"--nats-replicas=3".to_string()));
}

#[test]
fn nats_is_a_three_node_jetstream_cluster_the_gateway_urls_name() {
    let docs = manifest("nats.yaml");
    let set = kind(&docs, "StatefulSet");
    assert_eq!(set["spec"]["replicas"].as_u64(), Some(3));
    let config = kind(&docs, "ConfigMap")["data"]["nats.conf"]
        .as_str()
        .unwrap();
    assert!(config.contains("jetstream"), "{config}");
    for node in 0..3 {
        assert!(
            config.contains(&format!("nats://nats-{node}.nats:6222")),
            "{config}"
        );
    }
    assert!(
        set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );
    let gateway = manifests();
    let env = &kind(&gateway, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    let urls = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("GATEWAY_NATS_URL"))
        .and_then(|e| e["value"].as_str())
        .unwrap();
    for node in 0..3 {
        assert!(urls.contains(&format!("nats-{node}.nats:4222")), "{urls}");
    }
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
    // A real NATS stands in for the cluster's, a test value for the cluster secret.
    let nats = nats::Nats::start();
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            let value = match name {
                "GATEWAY_NATS_URL" => nats.url(),
                "GATEWAY_CLUSTER_SECRET" => "a test cluster secret".into(),
                _ => local(e["value"].as_str().unwrap()),
            };
            (name.into(), value)
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
