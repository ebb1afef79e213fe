//! Prometheus metrics after real calls: unary OK and error codes, a stream ended by its
//! client, the gateway's own series; scraped over HTTP from `--metrics-listen`. One test in
//! its own binary (the one test outside `tests/it`): the registry is process-wide, so only
//! here, with no other test's calls counted, are the values exact.

#[path = "it/support/gateway.rs"]
mod gateway;

use gateway::{AGENT1, SEED_SESSION, STEP, authed, serve_config};
use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::{DeleteUserDataRequest, SessionEventsRequest};
use gws_sms_gateway::server;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_every_rpc_to_its_final_code() {
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = serve_config(&sim.url, &[]);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_on(
        config,
        server::Listeners {
            grpc,
            metrics: Some(metrics),
            health: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SmsSessionServiceClient::new(channel);

    // A stream: SUBSCRIBED, one notification, then the client leaves.
    let mut stream = client
        .session_events(authed(SessionEventsRequest::default(), AGENT1))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let delete = |session: &str| {
        authed(
            DeleteUserDataRequest {
                session_id: session.into(),
                keys: vec!["UserData1".into()],
                ..Default::default()
            },
            AGENT1,
        )
    };
    client.delete_user_data(delete(SEED_SESSION)).await.unwrap();
    tokio::time::timeout(STEP, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let not_found = client.delete_user_data(delete("nope")).await.unwrap_err();
    assert_eq!(not_found.code(), tonic::Code::NotFound);
    let unauthenticated = client
        .delete_user_data(tonic::Request::new(DeleteUserDataRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);

    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = scrape().await;
    let rpc = |name: &str, method: &str, kind: &str, extra: &str| {
        format!(
            "{name}{{grpc_type=\"{kind}\",grpc_service=\"gws.sms.v1.SmsSessionService\",grpc_method=\"{method}\"{extra}}}"
        )
    };
    let du = |name: &str, extra: &str| rpc(name, "DeleteUserData", "unary", extra);
    assert_eq!(
        value(&text, &du("grpc_server_started_total", "")),
        Some(3.0),
        "{text}"
    );
    for (code, n) in [("OK", 1.0), ("NotFound", 1.0), ("Unauthenticated", 1.0)] {
        let series = du(
            "grpc_server_handled_total",
            &format!(",grpc_code=\"{code}\""),
        );
        assert_eq!(value(&text, &series), Some(n), "{series}\n{text}");
    }
    assert_eq!(
        value(&text, &du("grpc_server_msg_sent_total", "")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &du("grpc_server_handling_seconds_count", "")),
        Some(3.0),
        "{text}"
    );
    let se = |name: &str, extra: &str| rpc(name, "SessionEvents", "server_stream", extra);
    assert_eq!(
        value(&text, &se("grpc_server_started_total", "")),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &se("grpc_server_msg_sent_total", "")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "gws_gateway_streams_open"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gws_gateway_upstream_requests_total{operation=\"DeleteUserData\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gws_gateway_upstream_requests_total{operation=\"DeleteUserData\",outcome=\"gws_status_6\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "gws_gateway_agents"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "gws_gateway_cometd_sessions"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gws_gateway_cometd_handshakes_total{kind=\"initial\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gws_gateway_notifications_total{kind=\"PropertiesUpdated\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "gws_gateway_notifications_unmapped_total"),
        Some(0.0)
    );

    // The client leaves: the stream's final code is CANCELLED, as grpc-go reports it.
    drop(stream);
    let series = se("grpc_server_handled_total", ",grpc_code=\"Canceled\"");
    let text = tokio::time::timeout(STEP, async {
        loop {
            let text = scrape().await;
            if value(&text, &series) == Some(1.0) {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stream's end is counted");
    assert_eq!(
        value(&text, "gws_gateway_streams_open"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "gws_gateway_streams_cut_total{reason=\"client_gone\"}"
        ),
        Some(1.0),
        "{text}"
    );
}
