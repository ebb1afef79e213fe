//! Contact-center scale, end to end over real sockets: agents share one pooled HTTP client
//! yet never each other's cookies or CSRF tokens; an agent's state exists only once GWS
//! accepted its credential; first-time checks are rate limited before anything is sent
//! upstream; the agent and per-agent stream limits answer RESOURCE_EXHAUSTED. Every wait is
//! on a call, a stream item or a control-API observation, never a sleep.

use crate::support::events;
use crate::support::gateway;

use events::{open, subscribed};
use gateway::{AGENT1, AGENT2, Harness, SEED_SESSION, STEP, authed, eventually};
use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::proto::{DeleteUserDataRequest, ListSessionsRequest, SessionEventsRequest};
use gws_sms_gateway::upstream::{
    AgentRegistry, AgentsConfig, Credential, GwsClient, UpstreamError,
};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn delete_request() -> DeleteUserDataRequest {
    DeleteUserDataRequest {
        session_id: SEED_SESSION.into(),
        keys: vec!["NoSuchKey".into()],
        ..Default::default()
    }
}

async fn delete(h: &Harness, agent: (&str, &str)) -> Result<(), tonic::Status> {
    let mut client = h.client().await;
    let call = client.delete_user_data(authed(delete_request(), agent));
    tokio::time::timeout(STEP, call)
        .await
        .expect("answered in time")
        .map(|_| ())
}

fn stat(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

#[tokio::test]
async fn agents_share_pooled_connections_but_never_cookies_or_csrf() {
    let h = Harness::with_defaults().await;
    // Alternating calls: each one reuses the connection the other agent's call left idle.
    for _ in 0..5 {
        for agent in [AGENT1, AGENT2] {
            delete(&h, agent).await.expect("operation accepted");
        }
    }
    // And concurrently, writes and reads of both agents mixed on the pool.
    let mut calls = Vec::new();
    for i in 0..40 {
        let agent = if i % 2 == 0 { AGENT1 } else { AGENT2 };
        let mut client = h.client().await;
        calls.push(tokio::spawn(async move {
            if i % 4 < 2 {
                client
                    .delete_user_data(authed(delete_request(), agent))
                    .await
                    .map(|_| ())
            } else {
                client
                    .list_sessions(authed(ListSessionsRequest::default(), agent))
                    .await
                    .map(|_| ())
            }
        }));
    }
    for call in calls {
        call.await.unwrap().expect("call answered");
    }
    let stats = h.stats().await;
    assert!(
        stat(&stats, "shared_connections") >= 1,
        "the agents' requests shared pooled connections: {stats}"
    );
    assert_eq!(
        stat(&stats, "foreign_cookies"),
        0,
        "no request carried another agent's JSESSIONID: {stats}"
    );
    assert_eq!(
        stat(&stats, "csrf_rejections"),
        0,
        "no POST carried another agent's CSRF token: {stats}"
    );
    assert_eq!(
        stat(&stats, "http_sessions_created"),
        2,
        "each agent kept its one HTTP session, its cookie sent back every time: {stats}"
    );
    assert_eq!(
        stat(&stats, "me_requests"),
        2,
        "one check per agent: {stats}"
    );
    assert_eq!(stat(&stats, "operations_accepted"), 30);
}

#[tokio::test]
async fn refused_credentials_leave_no_state_and_share_one_check() {
    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let agents = AgentRegistry::new(AgentsConfig {
        plain_http: true,
        ..AgentsConfig::default()
    })
    .unwrap();
    let gws = GwsClient::new(sim.url.parse().unwrap(), agents.clone());
    let wrong = Credential::new(AGENT1.0, "not-the-password").unwrap();
    // Eight first calls at once: one check upstream, all refused.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (gws, wrong) = (gws.clone(), wrong.clone());
            tokio::spawn(async move { gws.agent(wrong.key(), &wrong, STEP).await.map(|_| ()) })
        })
        .collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                UpstreamError::Gws {
                    status_code: 20,
                    http_status: 401,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(agents.len(), 0, "a refused credential leaves nothing");
    let me = reqwest::get(format!("{}/simulator/stats", sim.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    assert_eq!(stat(&me, "me_requests"), 1, "{me}");
    assert_eq!(stat(&me, "rest_requests"), 1, "{me}");

    // Accepted: the state exists, and its first write needs no second GET.
    let right = Credential::new(AGENT1.0, AGENT1.1).unwrap();
    let agent = gws.agent(right.key(), &right, STEP).await.unwrap();
    assert_eq!(agents.len(), 1);
    let op = gws_sms_gateway::upstream::Operation::DeleteUserData {
        keys: vec!["NoSuchKey".into()],
    };
    gws.operation(&agent, SEED_SESSION, &op, STEP)
        .await
        .unwrap();
    let after: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{}/simulator/stats", sim.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stat(&after, "me_requests"), 2, "{after}");
    assert_eq!(stat(&after, "rest_requests"), 3, "GET /me + POST: {after}");
    sim.shutdown().await;
}

#[tokio::test]
async fn refused_credentials_over_grpc_are_unauthenticated_and_first_reads_cost_one_request() {
    let h = Harness::with_defaults().await;
    let mut client = h.client().await;
    let err = client
        .delete_user_data(authed(delete_request(), (AGENT1.0, "wrong")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let stats = h.stats().await;
    assert_eq!(
        (stat(&stats, "me_requests"), stat(&stats, "rest_requests")),
        (1, 1),
        "{stats}"
    );
    // A first read is its own check: one request, not GET /me and then the read.
    client
        .list_sessions(authed(ListSessionsRequest::default(), AGENT2))
        .await
        .unwrap();
    let stats = h.stats().await;
    assert_eq!(
        (stat(&stats, "me_requests"), stat(&stats, "rest_requests")),
        (1, 2),
        "{stats}"
    );
}

#[tokio::test]
async fn a_first_read_answered_without_a_gws_body_is_settled_by_get_me() {
    let h = Harness::with_defaults().await;
    // The first read gets a bare 404 (as a disabled feature answers): that says nothing
    // about the credential, so GET /api/v2/me decides, and the agent is admitted.
    h.faults(
        serde_json::json!({"fail": {"http_status": 404, "body": "<html>Not Found</html>",
        "content_type": "text/html", "times": 1}}),
    )
    .await;
    let mut client = h.client().await;
    let err = client
        .list_sessions(authed(ListSessionsRequest::default(), AGENT1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let stats = h.stats().await;
    assert_eq!(
        (stat(&stats, "rest_requests"), stat(&stats, "me_requests")),
        (2, 1),
        "{stats}"
    );
    // Admitted: the next read is not a check (no GET /me).
    client
        .list_sessions(authed(ListSessionsRequest::default(), AGENT1))
        .await
        .unwrap();
    assert_eq!(stat(&h.stats().await, "me_requests"), 1);
}

#[tokio::test]
async fn new_agents_beyond_the_rate_get_unavailable_with_retry_info_and_nothing_upstream() {
    let h = Harness::start(
        SimulatorConfig::default(),
        &["--new-agent-rate", "0.001", "--new-agent-burst", "1"],
    )
    .await;
    delete(&h, AGENT1).await.expect("the burst admits one");
    // An accepted check gave its token back; a refused one spends it.
    let err = delete(&h, ("agent1", "wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let before = stat(&h.stats().await, "rest_requests");
    let err = delete(&h, AGENT2).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let retry = err.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay > Duration::from_secs(60), "{delay:?}");
    assert_eq!(
        err.get_details_error_info().unwrap().reason,
        "NEW_AGENT_RATE_LIMITED"
    );
    assert_eq!(
        stat(&h.stats().await, "rest_requests"),
        before,
        "nothing was sent upstream for the limited call"
    );
    // A known agent is not limited.
    delete(&h, AGENT1).await.expect("known agent");
}

/// `n` callers of `agents` at once, each with its own connection; their results.
async fn all_at_once(h: &Harness, agents: &[(String, String)]) -> Vec<Result<(), tonic::Status>> {
    let mut calls = Vec::new();
    for (user, password) in agents {
        let (user, password) = (user.clone(), password.clone());
        let mut client = h.client().await;
        calls.push(tokio::spawn(async move {
            let call = client.delete_user_data(authed(delete_request(), (&user, &password)));
            tokio::time::timeout(STEP, call)
                .await
                .expect("answered in time")
                .map(|_| ())
        }));
    }
    let mut out = Vec::new();
    for call in calls {
        out.push(call.await.unwrap());
    }
    out
}

#[tokio::test]
async fn after_a_restart_valid_agents_beyond_the_burst_are_all_admitted_with_default_flags() {
    // Three times the default burst of valid agents, all calling at once: none is refused,
    // since each accepted check gives its token back, and each is checked once.
    let agents: Vec<_> = (0..300)
        .map(|i| (format!("a{i}"), "pw".to_string()))
        .collect();
    let h = Harness::start(
        SimulatorConfig {
            agents: agents.clone(),
            ..SimulatorConfig::default()
        },
        &[],
    )
    .await;
    let results = all_at_once(&h, &agents).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(stat(&h.stats().await, "me_requests"), 300);
}

#[tokio::test]
async fn random_credentials_cost_gws_at_most_the_burst_plus_the_rate() {
    let h = Harness::with_defaults().await;
    let random: Vec<_> = (0..300)
        .map(|i| (format!("nobody{i}"), "guess".to_string()))
        .collect();
    let started = std::time::Instant::now();
    let results = all_at_once(&h, &random).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut refused, mut limited) = (0, 0);
    for r in &results {
        let err = r.as_ref().expect_err("no random credential is admitted");
        match err.code() {
            Code::Unauthenticated => refused += 1,
            Code::Unavailable => {
                assert_eq!(
                    err.get_details_error_info().unwrap().reason,
                    "NEW_AGENT_RATE_LIMITED"
                );
                limited += 1;
            }
            _ => panic!("{err:?}"),
        }
    }
    let upstream = stat(&h.stats().await, "me_requests");
    // The default burst (100) plus the default rate (50/s) over the run, and nothing else.
    let allowed = 100 + (50.0 * elapsed).ceil() as u64;
    assert!(
        upstream <= allowed && upstream == refused,
        "{upstream} upstream checks ({refused} refused, {limited} limited) in {elapsed:.2} s"
    );
    assert!(limited > 0, "the spray was limited");
}

#[tokio::test]
async fn beyond_max_agents_is_resource_exhausted_without_an_upstream_request() {
    let h = Harness::start(SimulatorConfig::default(), &["--max-agents", "1"]).await;
    // A stream holds agent1's state: it cannot be evicted to make room.
    let _stream = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let before = stat(&h.stats().await, "rest_requests");
    let err = delete(&h, AGENT2).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("too many agents"),
        "{}",
        err.message()
    );
    assert_eq!(stat(&h.stats().await, "rest_requests"), before);
    delete(&h, AGENT1)
        .await
        .expect("the held agent still works");
}

#[tokio::test]
async fn beyond_max_streams_per_agent_is_resource_exhausted() {
    let h = Harness::start(
        SimulatorConfig::default(),
        &["--max-streams-per-agent", "2"],
    )
    .await;
    let first = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let _second = subscribed(&h, AGENT1, SessionEventsRequest::default()).await;
    let err = open(&h, AGENT1, SessionEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("at most 2") && err.message().contains("--max-streams-per-agent"),
        "{}",
        err.message()
    );
    // Another agent has its own allowance.
    let _other = subscribed(&h, AGENT2, SessionEventsRequest::default()).await;
    // A stream that leaves frees its place.
    drop(first);
    eventually("a freed stream slot is usable again", || async {
        match open(&h, AGENT1, SessionEventsRequest::default()).await {
            Ok(_) => true,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                false
            }
        }
    })
    .await;
}
