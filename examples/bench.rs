//! Benchmark harness: prints figures, asserts nothing (this machine is shared and noisy).
//! Runs the real gateway in front of the real simulator on loopback and measures:
//! - DeleteUserData latency (sequential) and throughput (concurrent callers);
//! - SessionEvents fan-out: one upstream session, many subscribers, events delivered per second;
//! - the process's resident memory before and after.
//!
//! `cargo run --release --example bench [-- CALLS SUBSCRIBERS EVENTS]` (defaults 2000 50 2000).

use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::config::{Cli, Command, ServeConfig};
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::{DeleteUserDataRequest, SessionEventsRequest};
use gws_sms_gateway::upstream::Credential;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const SESSION: &str = "0071023821aec011";

#[path = "support/proc.rs"]
mod proc_stats;

fn rss_kib() -> u64 {
    proc_stats::rss_kib("self")
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let auth = Credential::new("agent1", "password1")
        .unwrap()
        .authorization();
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    req
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let calls = *args.first().unwrap_or(&2000);
    let subscribers = *args.get(1).unwrap_or(&50);
    // Events are injected in bursts of 100.
    let events = (*args.get(2).unwrap_or(&2000) / 100).max(1) * 100;
    let rss_start = rss_kib();

    let sim = simulator::start(&SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let cli = <Cli as clap::Parser>::try_parse_from([
        "gws-sms-gateway",
        "serve",
        "--gws-url",
        &sim.url,
        "--stream-buffer",
        "4096",
        "--replay-max-events",
        "10000",
    ])
    .unwrap();
    let Some(Command::Serve(serve_args)) = cli.command else {
        unreachable!()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gws_sms_gateway::server::run(
        ServeConfig::from_args(serve_args).unwrap(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(addr).unwrap().connect().await.unwrap();
    let client = SmsSessionServiceClient::new(channel);
    let req = || DeleteUserDataRequest {
        session_id: SESSION.into(),
        keys: vec!["NoSuchKey".into()],
        ..Default::default()
    };

    // Warm up the agent's state (cookie, CSRF token, connections).
    client
        .clone()
        .delete_user_data(authed(req()))
        .await
        .unwrap();

    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client
            .clone()
            .delete_user_data(authed(req()))
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "DeleteUserData sequential: {calls} calls, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );

    let concurrency = 16;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..calls / concurrency {
                c.delete_user_data(authed(req())).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let done = (calls / concurrency) * concurrency;
    println!(
        "DeleteUserData concurrent ({concurrency} callers): {done} calls in {:?}, {:.0} calls/s",
        t.elapsed(),
        done as f64 / t.elapsed().as_secs_f64()
    );

    let mut streams = Vec::new();
    for _ in 0..subscribers {
        let mut s = client
            .clone()
            .session_events(authed(SessionEventsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap(); // SUBSCRIBED
        streams.push(s);
    }
    let stats = reqwest::get(format!("{}/simulator/agents/agent1/cometd", sim.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap_or_default();
    let data = serde_json::json!({
        "messageType": "SMSsessionStateChangeMessage", "notificationType": "PropertiesUpdated",
        "referenceId": 1, "smssession": { "id": "s1", "state": "Chatting",
        "userData": { "k": "v", "n": 1 }, "capabilities": [], "uri": "", "participants": [] }
    });
    let t = Instant::now();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for _ in 0..events {
                    s.message().await.unwrap().unwrap();
                }
            })
        })
        .collect();
    let http = reqwest::Client::new();
    let burst = 100;
    for _ in 0..events / burst {
        http.post(format!(
            "{}/simulator/agents/agent1/notifications?repeat={burst}",
            sim.url
        ))
        .header("content-type", "application/json")
        .body(data.to_string())
        .send()
        .await
        .unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    let elapsed = t.elapsed();
    println!(
        "SessionEvents fan-out: {events} events x {subscribers} subscribers over {} upstream session(s) \
         in {elapsed:?}: {:.0} events/s in, {:.0} items/s out",
        stats["sessions"],
        events as f64 / elapsed.as_secs_f64(),
        (events * subscribers) as f64 / elapsed.as_secs_f64()
    );
    println!(
        "resident memory: {} KiB at start, {} KiB at end",
        rss_start,
        rss_kib()
    );
    let _ = stop.send(());
    let _ = server.await;
}
