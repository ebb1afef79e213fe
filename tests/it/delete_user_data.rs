//! DeleteUserData end to end: a real tonic client -> the gateway -> real HTTP -> the GWS
//! simulator, for success, every error class, CSRF on and off, credentials, deadlines,
//! two agents' isolation and graceful shutdown.

use crate::support::gateway;

use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed};
use gws_simulator::SimulatorConfig;
use gws_sms_gateway::proto::DeleteUserDataRequest;
use serde_json::json;
use std::time::Duration;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

fn req(session: &str, keys: &[&str]) -> DeleteUserDataRequest {
    DeleteUserDataRequest {
        session_id: session.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    }
}

async fn delete(
    h: &Harness,
    agent: (&str, &str),
    session: &str,
    keys: &[&str],
) -> Result<Option<i64>, Status> {
    let mut client = h.client().await;
    let call = client.delete_user_data(authed(req(session, keys), agent));
    let resp = tokio::time::timeout(STEP, call)
        .await
        .expect("answers in time")?;
    Ok(resp.into_inner().reference_id)
}

#[tokio::test]
async fn deletes_a_key_with_csrf_on() {
    let h = Harness::with_defaults().await;
    assert!(
        h.sim_session("agent1", SEED_SESSION).await["userData"]
            .get("UserData1")
            .is_some()
    );
    let reference = delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap();
    assert!(
        reference.is_some(),
        "the simulator's reply carries a referenceId"
    );
    let session = h.sim_session("agent1", SEED_SESSION).await;
    assert!(session["userData"].get("UserData1").is_none(), "{session}");
    assert_eq!(session["userData"]["UserData2"], 123456789);
    let stats = h.stats().await;
    assert_eq!(
        stats["csrf_rejections"], 0,
        "the token was learnt before the first POST: {stats}"
    );
    // A second call reuses the agent's cookie and token: one more request, no GET /me.
    delete(&h, AGENT1, SEED_SESSION, &["Subject"])
        .await
        .unwrap();
    assert_eq!(
        h.stats().await["rest_requests"],
        stats["rest_requests"].as_u64().unwrap() + 1
    );
}

#[tokio::test]
async fn works_with_csrf_off() {
    let sim = SimulatorConfig {
        csrf: false,
        ..Default::default()
    };
    let h = Harness::start(sim, &[]).await;
    delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap();
    assert!(
        h.sim_session("agent1", SEED_SESSION).await["userData"]
            .get("UserData1")
            .is_none()
    );
}

#[tokio::test]
async fn refreshes_the_csrf_token_once_when_upstream_rejects_it() {
    let h = Harness::with_defaults().await;
    delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap();
    // GWS forgets every HTTP session: the gateway's cookie and token are now stale.
    h.control(
        reqwest::Method::POST,
        "/simulator/http-sessions/expire",
        None,
    )
    .await;
    delete(&h, AGENT1, SEED_SESSION, &["UserData2"])
        .await
        .unwrap();
    assert_eq!(h.stats().await["csrf_rejections"], 1);
    assert!(
        h.sim_session("agent1", SEED_SESSION).await["userData"]
            .get("UserData2")
            .is_none()
    );
}

#[tokio::test]
async fn invalid_requests_never_reach_upstream() {
    let h = Harness::with_defaults().await;
    let before = h.stats().await["rest_requests"].clone();
    let long_key = "k".repeat(257);
    let many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("", vec!["k"], "session_id"),
        ("a/b", vec!["k"], "session_id"),
        ("../../me", vec!["k"], "session_id"),
        (SEED_SESSION, vec![], "keys"),
        (SEED_SESSION, vec!["ok", ""], "keys[1]"),
        (SEED_SESSION, vec![long_key.as_str()], "keys[0]"),
        (SEED_SESSION, many, "keys"),
    ];
    for (session, keys, field) in cases {
        let status = delete(&h, AGENT1, session, &keys).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{session:?}: {status:?}"
        );
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, field, "{session:?}");
    }
    assert_eq!(
        h.stats().await["rest_requests"],
        before,
        "nothing went upstream"
    );
}

#[tokio::test]
async fn huge_messages_are_refused() {
    let h = Harness::with_defaults().await;
    let huge = "k".repeat(2 * 1024 * 1024);
    let status = delete(&h, AGENT1, SEED_SESSION, &[&huge])
        .await
        .unwrap_err();
    // tonic's own limit check answers OUT_OF_RANGE (gRPC core says RESOURCE_EXHAUSTED);
    // either way the message says why and nothing went upstream.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    assert_eq!(h.stats().await["rest_requests"], 0);
}

#[tokio::test]
async fn credentials_missing_wrong_scheme_or_wrong_password() {
    let h = Harness::with_defaults().await;
    let mut client = h.client().await;
    let status = client
        .delete_user_data(Request::new(req(SEED_SESSION, &["k"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut bearer = Request::new(req(SEED_SESSION, &["k"]));
    bearer
        .metadata_mut()
        .insert("authorization", "Bearer abc".parse().unwrap());
    let status = client.delete_user_data(bearer).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        h.stats().await["rest_requests"],
        0,
        "refused without an upstream call"
    );

    let status = delete(&h, ("agent1", "wrong"), SEED_SESSION, &["k"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "GWS_STATUS_20");
    assert!(
        !status.message().contains("wrong"),
        "the password never appears: {}",
        status.message()
    );
}

#[tokio::test]
async fn default_agent_credential_serves_calls_without_metadata() {
    let sim = SimulatorConfig::default();
    let h = Harness::start(
        sim,
        &[
            "--default-user",
            "agent2",
            "--default-password",
            "password2",
        ],
    )
    .await;
    let mut client = h.client().await;
    client
        .delete_user_data(Request::new(req(SEED_SESSION, &["UserData1"])))
        .await
        .unwrap();
    assert!(
        h.sim_session("agent2", SEED_SESSION).await["userData"]
            .get("UserData1")
            .is_none()
    );
    assert!(
        h.sim_session("agent1", SEED_SESSION).await["userData"]
            .get("UserData1")
            .is_some()
    );
}

#[tokio::test]
async fn gws_status_codes_map_to_grpc_codes_with_error_info() {
    let h = Harness::with_defaults().await;
    let status = delete(&h, AGENT1, "nope", &["k"]).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "GWS_STATUS_6");
    assert_eq!(info.domain, h.sim_url.trim_start_matches("http://"));
    assert_eq!(info.metadata["status_code"], "6");
    assert_eq!(info.metadata["http_status"], "404");
    assert!(info.metadata["status_message"].contains("not found"));

    let status = delete(&h, AGENT1, "0000CompletedSess", &["k"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "GWS_STATUS_2"
    );
}

#[tokio::test]
async fn upstream_failures_are_classified() {
    let h = Harness::with_defaults().await;
    // Learn the CSRF token first so every fault below hits the POST itself.
    delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap();
    let cases = [
        (
            json!({"http_status": 502, "body": "<html><body>Bad Gateway</body></html>"}),
            Code::Unavailable,
            "Bad Gateway",
        ),
        (
            json!({"http_status": 200, "body": "{\"statusCo"}),
            Code::Unavailable,
            "statusCo",
        ),
        (
            json!({"http_status": 503, "content_type": "application/json", "body": "{\"statusCode\":4,\"statusMessage\":\"down\"}"}),
            Code::Unavailable,
            "down",
        ),
        (
            json!({"http_status": 500, "content_type": "application/json", "body": "{\"statusCode\":4,\"statusMessage\":\"boom\"}"}),
            Code::Internal,
            "boom",
        ),
        (
            json!({"http_status": 200, "content_type": "application/json", "body": "{\"statusCode\":9}"}),
            Code::Unavailable,
            "statusCode 9",
        ),
        (
            json!({"http_status": 403, "content_type": "application/json", "body": "{\"statusCode\":5,\"statusMessage\":\"no permission\"}"}),
            Code::PermissionDenied,
            "no permission",
        ),
        (
            json!({"http_status": 401, "body": ""}),
            Code::Unauthenticated,
            "401",
        ),
    ];
    for (fail, code, needle) in cases {
        h.faults(json!({ "fail": fail })).await;
        let status = delete(&h, AGENT1, SEED_SESSION, &["Subject"])
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{fail}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{fail}: {}",
            status.message()
        );
        assert!(
            status.get_details_error_info().is_some(),
            "{fail}: ErrorInfo present"
        );
    }
}

#[tokio::test]
async fn upstream_down_is_unavailable() {
    // Bind and drop: a port on loopback where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::gateway(&format!("http://127.0.0.1:{port}"), &[]).await;
    let status = delete(&h, AGENT1, SEED_SESSION, &["k"]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_UNREACHABLE"
    );
}

#[tokio::test]
async fn caller_deadline_bounds_the_upstream_call() {
    let h = Harness::with_defaults().await;
    h.faults(json!({"delay_ms": 5000})).await;
    let mut client = h.client().await;
    let mut request = authed(req(SEED_SESSION, &["UserData1"]), AGENT1);
    // tonic's client enforces the deadline too and reports its own expiry as CANCELLED; a
    // 1 s deadline leaves the gateway's answer (at 900 ms) 100 ms ahead of it even on a
    // loaded machine.
    request.set_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let status = client.delete_user_data(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_TIMEOUT"
    );
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "answered before the upstream did"
    );
}

#[tokio::test]
async fn configured_upstream_timeout_applies_without_a_caller_deadline() {
    let h = Harness::start(SimulatorConfig::default(), &["--upstream-timeout", "300ms"]).await;
    h.faults(json!({"delay_ms": 3000})).await;
    let status = delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_TIMEOUT"
    );
}

#[tokio::test]
async fn two_agents_are_isolated() {
    let h = Harness::with_defaults().await;
    delete(&h, AGENT1, SEED_SESSION, &["UserData1"])
        .await
        .unwrap();
    delete(&h, AGENT2, SEED_SESSION, &["Subject"])
        .await
        .unwrap();
    delete(&h, AGENT1, SEED_SESSION, &["RTenant"])
        .await
        .unwrap();
    let a1 = h.sim_session("agent1", SEED_SESSION).await;
    let a2 = h.sim_session("agent2", SEED_SESSION).await;
    assert!(a1["userData"].get("UserData1").is_none() && a1["userData"].get("Subject").is_some());
    assert!(a2["userData"].get("UserData1").is_some() && a2["userData"].get("Subject").is_none());
    // Had a cookie or CSRF token crossed agents, the simulator would have refused a POST.
    assert_eq!(h.stats().await["csrf_rejections"], 0);
    // The session only agent1 has is not found for agent2.
    let status = delete(&h, AGENT2, "0000Wa9CAM6W00K5", &["UserData1"]).await;
    assert!(
        status.is_ok(),
        "agent2 has its own copy of the sample session"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    let mut h = Harness::with_defaults().await;
    h.faults(json!({"delay_ms": 500})).await;
    let mut client = h.client().await;
    let call = tokio::spawn(async move {
        client
            .delete_user_data(authed(req(SEED_SESSION, &["UserData1"]), AGENT1))
            .await
    });
    h.reached_upstream().await;
    let stopped = h.trigger_stop();
    let result = tokio::time::timeout(STEP, call).await.unwrap().unwrap();
    assert!(result.is_ok(), "in-flight call finished: {result:?}");
    tokio::time::timeout(STEP, stopped)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The port no longer accepts.
    assert!(tokio::net::TcpStream::connect(h.addr).await.is_err());
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_service() {
    use tokio_stream::StreamExt as _;
    let h = Harness::with_defaults().await;
    let channel = tonic::transport::Channel::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest as V1Req, server_reflection_request::MessageRequest as V1Msg,
        server_reflection_response::MessageResponse as V1Resp,
    };
    let req = V1Req {
        host: String::new(),
        message_request: Some(V1Msg::ListServices(String::new())),
    };
    let mut resp = V1::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(V1Resp::ListServicesResponse(list)) =
        resp.next().await.unwrap().unwrap().message_response
    else {
        panic!()
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"gws.sms.v1.SmsSessionService") && names.contains(&"grpc.health.v1.Health"),
        "{names:?}"
    );

    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1a;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as V1aReq, server_reflection_request::MessageRequest as V1aMsg,
        server_reflection_response::MessageResponse as V1aResp,
    };
    let req = V1aReq {
        host: String::new(),
        message_request: Some(V1aMsg::FileContainingSymbol(
            "gws.sms.v1.SmsSessionService".into(),
        )),
    };
    let mut resp = V1a::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(V1aResp::FileDescriptorResponse(files)) =
        resp.next().await.unwrap().unwrap().message_response
    else {
        panic!()
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
