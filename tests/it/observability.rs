//! Traces and logs through the real binary: a caller's `traceparent` continues into every
//! upstream request (REST and CometD) and into the JSON log lines, spans reach an OTLP
//! collector on loopback, SIGHUP reloads the listener's certificate, and at `RUST_LOG=trace`
//! no password, Basic header, CSRF token or `JSESSIONID` is ever printed.

use crate::support::certs;
use crate::support::process;

use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::{
    DeleteUserDataRequest, GetSessionRequest, NoticeKind, SessionEventsRequest,
    session_events_response::Event,
};
use gws_sms_gateway::upstream::Credential;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");
const STEP: Duration = Duration::from_secs(30);
const SEED: &str = "0071023821aec011";

/// The gateway as a child process; killed if the test fails first.
struct Gateway {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line seen so far.
    seen: Vec<String>,
}

impl Gateway {
    fn spawn(args: &[&str], rust_log: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("GWS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary runs");
        let (tx, lines) = mpsc::unbounded_channel();
        process::forward_lines(&mut child, move |line| {
            let _ = tx.send(line);
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first new line containing `needle`.
    async fn wait_for(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(STEP, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("output ended before {needle:?}");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no line with {needle:?} within {STEP:?}"))
    }

    /// The gRPC address, from the "gateway serving gRPC" line (text or JSON).
    async fn listen_addr(&mut self) -> String {
        let line = self.wait_for("gateway serving gRPC").await;
        let after = line.split("listen").nth(1).expect("listen field");
        after
            .trim_start_matches(['=', '"', ':'])
            .split(|c: char| c == '"' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    }

    fn signal(&self, signal: &str) {
        process::signal(&self.child, signal);
    }

    /// SIGTERM, then the exit code and every remaining line.
    async fn stop(&mut self) -> Option<i32> {
        self.signal("-TERM");
        tokio::time::timeout(STEP, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line);
            }
        })
        .await
        .expect("output ends");
        let status = tokio::task::block_in_place(|| self.child.wait().unwrap());
        status.code()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn authed<T>(
    message: T,
    user: &str,
    password: &str,
    traceparent: Option<&str>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = Credential::new(user, password).unwrap().authorization();
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    request
}

async fn client(addr: &str) -> SmsSessionServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SmsSessionServiceClient::new(channel)
}

/// Opens SessionEvents and waits for SUBSCRIBED.
async fn subscribed(
    client: &mut SmsSessionServiceClient<Channel>,
    request: tonic::Request<SessionEventsRequest>,
) -> tonic::Streaming<gws_sms_gateway::proto::SessionEventsResponse> {
    let mut stream = client.session_events(request).await.unwrap().into_inner();
    let first = tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first.event {
        Some(Event::Notice(n)) => assert_eq!(n.kind(), NoticeKind::Subscribed),
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    }
    stream
}

/// An OTLP/gRPC trace collector on loopback that keeps the trace ids it receives.
#[derive(Clone, Default)]
struct Collector {
    trace_ids: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut ids = self.trace_ids.lock().unwrap();
        for resource in &request.get_ref().resource_spans {
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    ids.push(span.trace_id.iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

const STREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const OP_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// agent1's SessionEvents, SUBSCRIBED, in the caller's trace `STREAM_TRACE`.
async fn subscribed_in_trace(
    c: &mut SmsSessionServiceClient<Channel>,
) -> tonic::Streaming<gws_sms_gateway::proto::SessionEventsResponse> {
    let traceparent = format!("00-{STREAM_TRACE}-00f067aa0ba902b7-01");
    let request = authed(
        SessionEventsRequest::default(),
        "agent1",
        "password1",
        Some(&traceparent),
    );
    subscribed(c, request).await
}

/// agent1's DeleteUserData of the seed session, in the caller's trace `trace` (or none).
async fn delete_in_trace(c: &mut SmsSessionServiceClient<Channel>, trace: Option<&str>) {
    let request = DeleteUserDataRequest {
        session_id: SEED.into(),
        keys: vec!["UserData1".into()],
        ..Default::default()
    };
    let traceparent = trace.map(|t| format!("00-{t}-b7ad6b7169203331-01"));
    c.delete_user_data(authed(
        request,
        "agent1",
        "password1",
        traceparent.as_deref(),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn traceparent_reaches_upstream_logs_and_the_otlp_collector() {
    let collector = Collector::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_url = format!("http://{}", otlp.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp)),
    );
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut gw = Gateway::spawn(
        &[
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gws-url",
            &sim.url,
            "--otlp-endpoint",
            &otlp_url,
        ],
        "info,gws_sms_gateway::grpc=debug",
    );
    let addr = gw.listen_addr().await;
    let mut c = client(&addr).await;

    let (stream_trace, op_trace) = (STREAM_TRACE, OP_TRACE);
    let _stream = subscribed_in_trace(&mut c).await;
    delete_in_trace(&mut c, Some(op_trace)).await;

    // Upstream: the CometD requests carry the stream's trace, the REST POST the operation's.
    let seen = sim.simulator.traceparents();
    let trace_of = |tp: &String| tp.split('-').nth(1).unwrap_or_default().to_string();
    assert!(
        seen.iter().any(|tp| trace_of(tp) == stream_trace),
        "{seen:?}"
    );
    assert!(seen.iter().any(|tp| trace_of(tp) == op_trace), "{seen:?}");

    // Logs: the operation's JSON log line carries its trace id.
    let line = gw.wait_for("operation accepted").await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert!(line.contains(op_trace), "{json}");

    // Spans reach the collector (the exit flushes them).
    assert_eq!(gw.stop().await, Some(0));
    let ids = collector.trace_ids.lock().unwrap().clone();
    assert!(ids.iter().any(|id| id == op_trace), "{ids:?}");
    assert!(ids.iter().any(|id| id == stream_trace), "{ids:?}");
}

/// Without `--otlp-endpoint` nothing is exported and no OpenTelemetry span is built, yet the
/// trace context still reaches upstream (also when no log line shows the spans) and the logs.
#[tokio::test(flavor = "multi_thread")]
async fn traceparent_continues_without_an_exporter() {
    let (stream_trace, op_trace) = (STREAM_TRACE, OP_TRACE);
    let trace_of = |tp: &str| tp.split('-').nth(1).unwrap_or_default().to_string();
    let failed_trace = "5c1d6e7f8091a2b3c4d5e6f708192a3b";
    for rust_log in [
        "warn,gws_sms_gateway::server=info",
        "info",
        "info,gws_sms_gateway::grpc=debug",
    ] {
        let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut gw = Gateway::spawn(
            &["serve", "--listen", "127.0.0.1:0", "--gws-url", &sim.url],
            rust_log,
        );
        let addr = gw.listen_addr().await;
        let mut c = client(&addr).await;
        let _stream = subscribed_in_trace(&mut c).await;
        delete_in_trace(&mut c, Some(op_trace)).await;
        let before = sim.simulator.traceparents();
        delete_in_trace(&mut c, None).await;

        let seen = sim.simulator.traceparents();
        // The CometD requests carry the stream's trace, the POST the operation's; the parent
        // span is the gateway's own, not the caller's.
        let continued: Vec<_> = seen
            .iter()
            .filter(|tp| [stream_trace, op_trace].contains(&trace_of(tp).as_str()))
            .collect();
        for trace in [stream_trace, op_trace] {
            assert!(
                continued.iter().any(|tp| trace_of(tp) == trace),
                "{rust_log}: {seen:?}"
            );
        }
        for tp in &continued {
            assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
            assert!(
                !tp.contains("00f067aa0ba902b7") && !tp.contains("b7ad6b7169203331"),
                "{tp}"
            );
        }
        // A call without a traceparent starts a trace of its own, not sampled.
        let fresh: Vec<_> = seen.iter().filter(|tp| !before.contains(tp)).collect();
        assert!(!fresh.is_empty(), "{rust_log}: {seen:?}");
        for tp in fresh {
            let parts: Vec<_> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert!(![stream_trace, op_trace].contains(&parts[1]), "{tp}");
            assert_eq!(
                (parts[1].len(), parts[2].len(), parts[3]),
                (32, 16, "00"),
                "{tp}"
            );
        }

        if rust_log.contains("grpc=debug") {
            let line = gw.wait_for("operation accepted").await;
            assert!(line.contains(&format!("trace_id={op_trace}")), "{line}");
        }
        if rust_log == "info" {
            // At info a call has no span; the line about a failed call carries the trace id.
            let unknown = DeleteUserDataRequest {
                session_id: "00000000000000aa".into(),
                keys: vec!["UserData1".into()],
                ..Default::default()
            };
            let tp = format!("00-{failed_trace}-b7ad6b7169203331-01");
            c.delete_user_data(authed(unknown, "agent1", "password1", Some(&tp)))
                .await
                .expect_err("unknown session");
            let line = gw.wait_for("operation failed").await;
            assert!(line.contains(&format!("trace_id={failed_trace}")), "{line}");
            assert!(!line.contains("rpc{"), "no rpc span at info: {line}");
        }
        assert_eq!(gw.stop().await, Some(0));
        if !rust_log.contains("grpc=debug") {
            assert!(
                !gw.seen.iter().any(|l| l.contains("operation accepted")),
                "per-call lines are at debug: {:?}",
                gw.seen
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_is_logged_even_at_trace_level() {
    const USER: &str = "opsagent";
    const PASSWORD: &str = "Pw-for-the-log-test-7f3a9";
    let sim_config = SimulatorConfig {
        agents: vec![(USER.into(), PASSWORD.into())],
        ..SimulatorConfig::default()
    };
    let sim = simulator::start(&sim_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut gw = Gateway::spawn(
        &["serve", "--listen", "127.0.0.1:0", "--gws-url", &sim.url],
        "trace",
    );
    let addr = gw.listen_addr().await;
    let mut c = client(&addr).await;
    let mut stream = subscribed(
        &mut c,
        authed(SessionEventsRequest::default(), USER, PASSWORD, None),
    )
    .await;
    c.get_session(authed(
        GetSessionRequest {
            session_id: SEED.into(),
        },
        USER,
        PASSWORD,
        None,
    ))
    .await
    .unwrap();
    c.delete_user_data(authed(
        DeleteUserDataRequest {
            session_id: SEED.into(),
            keys: vec!["UserData1".into()],
            ..Default::default()
        },
        USER,
        PASSWORD,
        None,
    ))
    .await
    .unwrap();
    // The notification came through the stream: the CometD path ran too.
    let item = tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(item.event, Some(Event::StateChange(_))),
        "{item:?}"
    );

    let mut secrets = sim.simulator.issued_secrets();
    assert!(
        secrets.len() >= 2,
        "a JSESSIONID and a CSRF token were issued"
    );
    let basic = Credential::new(USER, PASSWORD).unwrap().authorization();
    let basic_value = basic.trim_start_matches("Basic ").to_string();
    secrets.extend([PASSWORD.to_string(), basic, basic_value]);
    drop(stream);
    assert_eq!(gw.stop().await, Some(0));
    assert!(
        gw.seen.len() > 100,
        "trace level logs a lot: {}",
        gw.seen.len()
    );
    for line in &gw.seen {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "secret {secret:?} logged: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_listener_certificate() {
    let dir = certs::TempDir::new("sighup");
    let (ca1, ca2) = (certs::Ca::new("one"), certs::Ca::new("two"));
    let first = ca1.server("gw");
    let cert = dir.write("tls.crt", &first.cert_pem);
    let key = dir.write("tls.key", &first.key_pem);
    let mut gw = Gateway::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--gws-url",
            "http://127.0.0.1:9",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        "info",
    );
    let addr = gw.listen_addr().await;
    let port = addr.rsplit(':').next().unwrap().to_string();
    let check = |ca: &certs::Ca| {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem))
            .domain_name("localhost");
        let endpoint = Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        async move {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            let Ok(channel) = endpoint.connect().await else {
                return false;
            };
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        }
    };
    assert!(check(&ca1).await);
    let second = ca2.server("gw");
    dir.write("tls.crt", &second.cert_pem);
    dir.write("tls.key", &second.key_pem);
    gw.signal("-HUP");
    gw.wait_for("TLS certificate reloaded").await;
    assert!(check(&ca2).await);
    assert!(!check(&ca1).await);
    assert_eq!(gw.stop().await, Some(0));
}
