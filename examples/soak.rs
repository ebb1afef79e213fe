//! Soak harness (not in CI): the release gateway binary, as a child process, in front of the
//! GWS simulator (in this process), for a chosen time at a chosen rate of operation calls
//! plus open SessionEvents streams, with periodic server-side CometD drops. Prints, at
//! intervals and at the end: calls and errors by code, the gateway's RSS, notifications
//! published vs stream items received, and the UPSTREAM_LOST / RESTORED notices seen.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example soak -- --seconds 600 --rate 500 --streams 200 --agents 20 --drop-every 60
//! ```
//!
//! Every accepted operation (AttachUserData / DeleteUserData on the agent's seed session)
//! makes the simulator publish one PropertiesUpdated to that agent, which each of the agent's
//! streams should receive: "expected" is accepted operations x streams of that agent. During
//! a CometD drop, until the gateway has re-handshaked, GWS has no session to publish to and
//! those notifications are gone (the streams are told: UPSTREAM_LOST, then RESTORED); that is
//! the whole expected shortfall, so it is printed next to the number of drops.

use gws_simulator::{self as simulator, SimulatorConfig};
use gws_sms_gateway::proto::session_events_response::Event;
use gws_sms_gateway::proto::sms_session_service_client::SmsSessionServiceClient;
use gws_sms_gateway::proto::{
    AttachUserDataRequest, DeleteUserDataRequest, NoticeKind, SessionEventsRequest,
};
use gws_sms_gateway::upstream::Credential;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const SESSION: &str = "0071023821aec011";

struct Options {
    seconds: u64,
    rate: u64,
    streams: usize,
    agents: usize,
    drop_every: u64,
    report_every: u64,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 60,
        rate: 500,
        streams: 200,
        agents: 20,
        drop_every: 60,
        report_every: 30,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value else {
            eprintln!(
                "usage: soak [--seconds N] [--rate CALLS_PER_S] [--streams N] [--agents N] [--drop-every S] [--report-every S]"
            );
            std::process::exit(64);
        };
        match pair[0].as_str() {
            "--seconds" => o.seconds = value,
            "--rate" => o.rate = value.max(1),
            "--streams" => o.streams = value as usize,
            "--agents" => o.agents = (value as usize).max(1),
            "--drop-every" => o.drop_every = value,
            "--report-every" => o.report_every = value.max(1),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(64);
            }
        }
    }
    o
}

#[path = "support/proc.rs"]
mod proc_stats;

fn rss_kib(pid: u32) -> u64 {
    proc_stats::rss_kib(&pid.to_string())
}

fn agent(i: usize) -> (String, String) {
    (format!("soak{i}"), format!("pw{i}"))
}

fn authed<T>(msg: T, agent: &(String, String)) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let auth = Credential::new(&agent.0, &agent.1).unwrap().authorization();
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    req.set_timeout(Duration::from_secs(5));
    req
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    skipped: AtomicU64,
    items: AtomicU64,
    lost: AtomicU64,
    restored: AtomicU64,
    stream_errors: AtomicU64,
    accepted_by_agent: Vec<AtomicU64>,
    errors: Mutex<BTreeMap<String, u64>>,
}

#[tokio::main]
async fn main() {
    let o = options();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("gws-sms-gateway")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            eprintln!("the release binary is missing: run `cargo build --release` first");
            std::process::exit(69);
        });
    let agents: Vec<(String, String)> = (0..o.agents).map(agent).collect();
    let sim = simulator::start(
        &SimulatorConfig {
            agents: agents.clone(),
            ..SimulatorConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut child = Command::new(&binary)
        .args(["serve", "--gws-url", &sim.url, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,gws_sms_gateway::server=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the gateway starts");
    let pid = child.id();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let warnings = Arc::new(AtomicU64::new(0));
    let stderr = child.stderr.take().unwrap();
    let seen_warnings = warnings.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listen=").nth(1) {
                let _ = addr_tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            } else if line.contains(" WARN ") || line.contains(" ERROR ") {
                // The first few verbatim, then only counted.
                if seen_warnings.fetch_add(1, Relaxed) < 5 {
                    eprintln!("gateway: {line}");
                }
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway announces its address");
    // One connection per agent, as separate backend instances would have (and HTTP/2's
    // concurrent-stream limit stays far away).
    let mut clients = Vec::new();
    for _ in 0..o.agents {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(SmsSessionServiceClient::new(channel));
    }
    let counters = Arc::new(Counters {
        accepted_by_agent: (0..o.agents).map(|_| AtomicU64::new(0)).collect(),
        ..Counters::default()
    });
    println!(
        "soak: {} s, {} calls/s, {} streams over {} agents, CometD drop every {} s; gateway pid {pid}, RSS {} KiB",
        o.seconds,
        o.rate,
        o.streams,
        o.agents,
        o.drop_every,
        rss_kib(pid)
    );

    // The streams, each reading everything, reopened (resuming) if the gateway ends one.
    let mut streams_per_agent = vec![0u64; o.agents];
    let mut subscribed = Vec::new();
    for s in 0..o.streams {
        let a = s % o.agents;
        streams_per_agent[a] += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        subscribed.push(rx);
        let mut client = clients[a].clone();
        let agent = agents[a].clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut resume = String::new();
            loop {
                let mut req = authed(
                    SessionEventsRequest {
                        resume_token: resume.clone(),
                        ..Default::default()
                    },
                    &agent,
                );
                req.set_timeout(Duration::from_secs(24 * 3600));
                let Ok(response) = client.session_events(req).await else {
                    counters.stream_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(item)) => {
                            resume.clone_from(&item.resume_token);
                            match item.event {
                                Some(Event::StateChange(_)) => {
                                    counters.items.fetch_add(1, Relaxed);
                                }
                                Some(Event::Notice(n)) => match NoticeKind::try_from(n.kind) {
                                    Ok(NoticeKind::Subscribed) => {
                                        if let Some(tx) = tx.take() {
                                            let _ = tx.send(());
                                        }
                                    }
                                    Ok(NoticeKind::UpstreamLost) => {
                                        counters.lost.fetch_add(1, Relaxed);
                                    }
                                    Ok(NoticeKind::UpstreamRestored) => {
                                        counters.restored.fetch_add(1, Relaxed);
                                    }
                                    _ => {}
                                },
                                _ => {}
                            }
                        }
                        _ => {
                            counters.stream_errors.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                }
            }
        });
    }
    for rx in subscribed {
        let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
    }
    println!(
        "soak: {} streams subscribed, RSS {} KiB",
        o.streams,
        rss_kib(pid)
    );

    // Periodic CometD drops, server side, for every agent.
    let drops = Arc::new(AtomicU64::new(0));
    if o.drop_every > 0 {
        let http = reqwest::Client::new();
        let url = sim.url.clone();
        let agents = agents.clone();
        let drops = drops.clone();
        let every = Duration::from_secs(o.drop_every);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                for (user, _) in &agents {
                    let _ = http
                        .post(format!("{url}/simulator/agents/{user}/cometd/drop"))
                        .send()
                        .await;
                }
                drops.fetch_add(1, Relaxed);
            }
        });
    }

    // The calls: `rate` per second, round robin over the agents, at most 256 in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let end = started + Duration::from_secs(o.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_report = started + Duration::from_secs(o.report_every);
    let mut n: u64 = 0;
    let mut rss_samples = Vec::new();
    // Reads the gateway's RSS, keeps it, and prints where the run stands.
    let sample = |samples: &mut Vec<u64>| {
        let rss = rss_kib(pid);
        samples.push(rss);
        report(
            &counters,
            &streams_per_agent,
            &drops,
            started,
            rss,
            &warnings,
        );
    };
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            counters.skipped.fetch_add(1, Relaxed);
            continue;
        };
        let a = (n as usize) % o.agents;
        let agent = agents[a].clone();
        let mut client = clients[a].clone();
        let call_counters = counters.clone();
        tokio::spawn(async move {
            let counters = call_counters;
            let _permit = permit;
            counters.calls.fetch_add(1, Relaxed);
            let result = if n.is_multiple_of(2) {
                let data = serde_json::json!({ "soak": n });
                let user_data = match gws_sms_gateway::mapping::user_data_value(&data).kind {
                    Some(gws_sms_gateway::proto::user_data_value::Kind::MapValue(m)) => m.fields,
                    _ => unreachable!(),
                };
                client
                    .attach_user_data(authed(
                        AttachUserDataRequest {
                            session_id: SESSION.into(),
                            user_data,
                            ..Default::default()
                        },
                        &agent,
                    ))
                    .await
                    .map(|_| ())
            } else {
                client
                    .delete_user_data(authed(
                        DeleteUserDataRequest {
                            session_id: SESSION.into(),
                            keys: vec!["soak".into()],
                            ..Default::default()
                        },
                        &agent,
                    ))
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => {
                    counters.accepted_by_agent[a].fetch_add(1, Relaxed);
                }
                Err(status) => {
                    *counters
                        .errors
                        .lock()
                        .unwrap()
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                }
            }
        });
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(o.report_every);
            sample(&mut rss_samples);
        }
    }
    // Let in-flight calls and their notifications land.
    let _ = in_flight.acquire_many(256).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("--- final");
    sample(&mut rss_samples);
    println!(
        "RSS samples (KiB): {:?}; min {} max {}",
        rss_samples,
        rss_samples.iter().min().unwrap_or(&0),
        rss_samples.iter().max().unwrap_or(&0)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    println!("gateway exited: {status}");
}

fn report(
    c: &Counters,
    streams_per_agent: &[u64],
    drops: &AtomicU64,
    started: Instant,
    rss: u64,
    warnings: &AtomicU64,
) {
    let accepted: u64 = c.accepted_by_agent.iter().map(|a| a.load(Relaxed)).sum();
    let expected: u64 = c
        .accepted_by_agent
        .iter()
        .zip(streams_per_agent)
        .map(|(a, s)| a.load(Relaxed) * s)
        .sum();
    let received = c.items.load(Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "t={elapsed:>6.0}s calls {} ({:.0}/s, {} skipped at the in-flight cap) accepted {accepted} errors {:?} | items expected {expected} received {received} ({:.3}%) | drops {} lost-notices {} restored-notices {} stream-ends {} | gateway RSS {rss} KiB, warnings {}",
        c.calls.load(Relaxed),
        c.calls.load(Relaxed) as f64 / elapsed,
        c.skipped.load(Relaxed),
        c.errors.lock().unwrap(),
        if expected == 0 {
            100.0
        } else {
            received as f64 * 100.0 / expected as f64
        },
        drops.load(Relaxed),
        c.lost.load(Relaxed),
        c.restored.load(Relaxed),
        c.stream_errors.load(Relaxed),
        warnings.load(Relaxed),
    );
}
