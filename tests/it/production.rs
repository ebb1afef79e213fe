//! Production operations in process, over real sockets: TLS on the listener (mutual TLS,
//! reload), TLS towards an HTTPS GWS with a private CA and a client certificate, reflection
//! of the google.rpc error details, and a drain that runs out of time being reported.

use crate::support::certs;
use crate::support::gateway;

use certs::{Ca, Leaf, TempDir};
use gateway::{AGENT1, Harness, SEED_SESSION, STEP, authed, serve_config};
use gws_simulator::{Simulator, SimulatorConfig};
use gws_sms_gateway::config::ServeConfig;
use gws_sms_gateway::proto::DeleteUserDataRequest;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::server::{self, ServerError};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn delete_request() -> DeleteUserDataRequest {
    DeleteUserDataRequest {
        session_id: SEED_SESSION.into(),
        keys: vec!["UserData1".into()],
        ..Default::default()
    }
}

/// A gateway serving on 127.0.0.1:0 with `config`; stops when the sender drops.
async fn start(config: ServeConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_on(
        config,
        server::Listeners::grpc(listener),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

/// A TLS channel to the gateway trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    addr: SocketAddr,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a health check over `channel` answers SERVING.
async fn healthy(channel: Result<Channel, tonic::transport::Error>) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = channel else { return false };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(tokio::time::timeout(STEP, check).await, Ok(Ok(r)) if r.get_ref().status == 1)
}

#[tokio::test]
async fn tls_listener_serves_refuses_plaintext_and_reloads_certificates() {
    let dir = TempDir::new("tls");
    let (ca1, ca2) = (Ca::new("first CA"), Ca::new("second CA"));
    let first = ca1.server("gateway");
    let cert = dir.write("tls.crt", &first.cert_pem);
    let key = dir.write("tls.key", &first.key_pem);
    let config = serve_config(
        "http://127.0.0.1:9",
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let tls = config.server_tls.clone().expect("TLS configured");
    let (addr, _stop) = start(config).await;

    assert!(healthy(tls_channel(addr, &ca1, None).await).await);
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(!healthy(plain).await, "plaintext is refused");

    // New files, then the reload SIGHUP triggers: new connections see the new certificate.
    let second = ca2.server("gateway");
    dir.write("tls.crt", &second.cert_pem);
    dir.write("tls.key", &second.key_pem);
    tls.reload().expect("reload succeeds");
    assert!(healthy(tls_channel(addr, &ca2, None).await).await);
    assert!(!healthy(tls_channel(addr, &ca1, None).await).await);

    // A broken file: the reload fails and says why; the current certificate stays.
    dir.write("tls.crt", "not a certificate");
    let error = tls.reload().unwrap_err().to_string();
    assert!(error.contains("tls.crt"), "{error}");
    assert!(healthy(tls_channel(addr, &ca2, None).await).await);
}

#[tokio::test]
async fn probes_get_plaintext_health_beside_a_tls_listener() {
    // The kubelet's gRPC probe speaks no TLS: --health-listen serves health alone, in
    // plaintext, while the API stays TLS only.
    let dir = TempDir::new("health");
    let ca = Ca::new("probe CA");
    let leaf = ca.server("gateway");
    let cert = dir.write("tls.crt", &leaf.cert_pem);
    let key = dir.write("tls.key", &leaf.key_pem);
    let config = serve_config(
        "http://127.0.0.1:9",
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, health_addr) = (grpc.local_addr().unwrap(), health.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = server::Listeners {
        grpc,
        metrics: None,
        health: Some(health),
    };
    tokio::spawn(server::serve_on(config, listeners, async {
        let _ = stopped.await;
    }));
    assert!(healthy(tls_channel(addr, &ca, None).await).await);
    let probe = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(healthy(probe).await, "the probe port answers in plaintext");
    // Only health: the API is not reachable there.
    let channel = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = SmsSessionServiceClient::new(channel)
        .delete_user_data(authed(delete_request(), AGENT1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let dir = TempDir::new("mtls");
    let (server_ca, client_ca, other_ca) = (Ca::new("server"), Ca::new("clients"), Ca::new("x"));
    let leaf = server_ca.server("gateway");
    let cert = dir.write("tls.crt", &leaf.cert_pem);
    let key = dir.write("tls.key", &leaf.key_pem);
    let cas = dir.write("clients.crt", &client_ca.pem);
    let config = serve_config(
        "http://127.0.0.1:9",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &cas,
        ],
    );
    let (addr, _stop) = start(config).await;

    let good = client_ca.client("app");
    let stranger = other_ca.client("intruder");
    assert!(healthy(tls_channel(addr, &server_ca, Some(&good)).await).await);
    assert!(!healthy(tls_channel(addr, &server_ca, None).await).await);
    assert!(!healthy(tls_channel(addr, &server_ca, Some(&stranger)).await).await);
}

/// A TLS listener for axum: handshakes in `accept` (one at a time is plenty for a test).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The simulator over HTTPS with `server_config`, as a GWS behind a private CA.
async fn https_simulator(server_config: Arc<rustls::ServerConfig>) -> (String, Simulator) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", tcp.local_addr().unwrap().port());
    let sim = Simulator::new(&SimulatorConfig::default(), &url);
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(server_config),
    };
    tokio::spawn(axum::serve(listener, sim.router()).into_future());
    (url, sim)
}

#[tokio::test]
async fn gws_over_https_with_a_private_ca_and_a_client_certificate() {
    let dir = TempDir::new("gws-tls");
    let (gws_ca, client_ca) = (Ca::new("GWS private CA"), Ca::new("GWS client CA"));
    let server_leaf = gws_ca.server("gws");
    let (url, _sim) = https_simulator(certs::rustls_server(&server_leaf, Some(&client_ca))).await;
    let ca = dir.write("gws-ca.crt", &gws_ca.pem);
    let ident = client_ca.client("gateway");
    let client_cert = dir.write("gw.crt", &ident.cert_pem);
    let client_key = dir.write("gw.key", &ident.key_pem);

    let outcome = |extra: Vec<String>| {
        let url = url.clone();
        async move {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let h = Harness::gateway(&url, &extra).await;
            let mut client = h.client().await;
            client
                .delete_user_data(authed(delete_request(), AGENT1))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    let full = vec![
        "--gws-ca".to_string(),
        ca.clone(),
        "--gws-client-cert".into(),
        client_cert.clone(),
        "--gws-client-key".into(),
        client_key.clone(),
    ];
    assert_eq!(outcome(full).await, Ok(()));
    // Without the private CA the server is not trusted; without the identity GWS refuses.
    let no_ca = vec![
        "--gws-client-cert".to_string(),
        client_cert,
        "--gws-client-key".into(),
        client_key,
    ];
    assert_eq!(outcome(no_ca).await, Err(Code::Unavailable));
    assert_eq!(
        outcome(vec!["--gws-ca".to_string(), ca]).await,
        Err(Code::Unavailable)
    );
}

#[tokio::test]
async fn reflection_serves_the_google_rpc_error_details() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let h = Harness::with_defaults().await;
    let channel = Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    for symbol in ["google.rpc.ErrorInfo", "google.rpc.BadRequest"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("{symbol}: no file descriptor: {reply:?}");
        };
        let files: Vec<prost_types::FileDescriptorProto> = files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost::Message::decode(bytes.as_slice()).unwrap())
            .collect();
        let message = symbol.trim_start_matches("google.rpc.");
        assert!(
            files.iter().any(|f| f.package() == "google.rpc"
                && f.message_type.iter().any(|m| m.name() == message)),
            "{symbol}: {files:?}"
        );
    }
}

#[tokio::test]
async fn a_drain_that_runs_out_of_time_is_reported() {
    let mut h = Harness::start(SimulatorConfig::default(), &["--drain-timeout", "100ms"]).await;
    h.faults(json!({"delay_ms": 5000})).await;
    let mut client: SmsSessionServiceClient<Channel> = h.client().await;
    let call = tokio::spawn(async move {
        client
            .delete_user_data(authed(delete_request(), AGENT1))
            .await
    });
    h.reached_upstream().await;
    let stopped = h.trigger_stop();
    let result = tokio::time::timeout(STEP, stopped).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(ServerError::DrainTimedOut(_))),
        "{result:?}"
    );
    call.abort();
}
