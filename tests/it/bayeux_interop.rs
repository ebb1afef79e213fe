//! Interop tests of the Bayeux client against the CometD project's Node server
//! (npm `cometd-nodejs-server` with its acknowledgement extension), plus canned
//! HTTP servers for the failure paths a real server will not produce on demand.
//! Every server binds 127.0.0.1:0; every test has an overall timeout; waits are on
//! client events or server replies, never on sleeps.

use crate::support::cometd_node;
use crate::support::cut_proxy;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use gws_sms_gateway::bayeux::{self, BayeuxConfig, BayeuxEvent};
use gws_sms_gateway::upstream::{Agent, Credential};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cometd_node::CometdNode;
use cut_proxy::CutProxy;

/// Upper bound for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one expected client event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// CometD `timeout` of the test server: short, so parked connects cycle quickly.
const SERVER_TIMEOUT_MS: u64 = 2000;
const SERVER_MAX_INTERVAL_MS: u64 = 5000;

struct Client {
    events: mpsc::Receiver<BayeuxEvent>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Client {
    fn start(url: reqwest::Url, channels: &[&str]) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        // The agent's own jar keeps the server's cookies, as in the gateway.
        let credential = Credential::new("interop", "x").expect("credential");
        let agent = std::sync::Arc::new(Agent::new(&credential).expect("agent"));
        let mut config = BayeuxConfig::new(url, channels.iter().map(|c| (*c).to_owned()).collect());
        config.network_allowance = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(5);
        config.max_backoff = Duration::from_secs(2);
        let (tx, events) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(bayeux::run(http, agent, config, tx, cancel.clone()));
        Self {
            events,
            cancel,
            task,
        }
    }

    /// Starts a client and waits for its first event, which must be the initial Subscribed.
    async fn subscribed(url: reqwest::Url, channels: &[&str]) -> Self {
        let mut client = Self::start(url, channels);
        assert_eq!(
            client.next().await,
            BayeuxEvent::Subscribed { restored: false }
        );
        client
    }

    async fn next(&mut self) -> BayeuxEvent {
        tokio::time::timeout(EVENT_TIMEOUT, self.events.recv())
            .await
            .expect("no client event in time")
            .expect("client task ended")
    }

    /// The next event, which must be a message; returns its data.
    async fn next_message(&mut self, channel: &str) -> Value {
        match self.next().await {
            BayeuxEvent::Message { channel: c, data } if c == channel => data,
            other => panic!("expected a message on {channel}, got {other:?}"),
        }
    }

    /// Cancels and waits for the task (which sends the disconnect) to end.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(EVENT_TIMEOUT, self.task)
            .await
            .expect("client did not stop in time")
            .expect("client task panicked");
    }
}

#[tokio::test]
async fn handshake_subscribe_deliver_in_order_and_disconnect() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut node = CometdNode::start(SERVER_TIMEOUT_MS, SERVER_MAX_INTERVAL_MS).await;
        let mut client = Client::subscribed(node.url(), &["/test/a", "/test/b"]).await;
        assert_eq!(node.command("subscribers /test/a").await["count"], 1);
        assert_eq!(node.command("subscribers /test/b").await["count"], 1);

        for n in 0..5 {
            node.publish("/test/a", &json!({ "n": n })).await;
        }
        node.publish("/test/b", &json!({ "n": 5 })).await;
        for n in 0..5 {
            assert_eq!(client.next_message("/test/a").await, json!({ "n": n }));
        }
        assert_eq!(client.next_message("/test/b").await, json!({ "n": 5 }));

        // A parked connect held for the whole server timeout (2 s) is not cut short by
        // the client's HTTP timeout, and the next one still delivers.
        node.wait_event("connectExpired").await;
        node.publish("/test/a", &json!("late")).await;
        assert_eq!(client.next_message("/test/a").await, json!("late"));

        client.stop().await;
        // The best-effort /meta/disconnect removed the session (not an expiry).
        assert_eq!(node.wait_event("sessionRemoved").await["timeout"], false);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn server_side_disconnect_is_lost_then_restored_and_delivery_continues() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut node = CometdNode::start(SERVER_TIMEOUT_MS, SERVER_MAX_INTERVAL_MS).await;
        let mut client = Client::subscribed(node.url(), &["/test/a"]).await;
        node.publish("/test/a", &json!(1)).await;
        assert_eq!(client.next_message("/test/a").await, json!(1));

        assert_eq!(node.command("drop").await["count"], 1);
        match client.next().await {
            BayeuxEvent::Lost { reason } => assert!(reason.contains("402"), "reason {reason}"),
            other => panic!("expected Lost, got {other:?}"),
        }
        assert_eq!(
            client.next().await,
            BayeuxEvent::Subscribed { restored: true }
        );
        assert_eq!(node.command("sessions").await["count"], 1);
        assert_eq!(node.command("subscribers /test/a").await["count"], 1);

        node.publish("/test/a", &json!(2)).await;
        assert_eq!(client.next_message("/test/a").await, json!(2));
        client.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn ack_extension_redelivers_a_lost_connect_response_exactly_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut node = CometdNode::start(SERVER_TIMEOUT_MS, SERVER_MAX_INTERVAL_MS).await;
        let proxy = CutProxy::start(node.port, b"cut-me");
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:{}/cometd", proxy.port)).unwrap();
        let mut client = Client::subscribed(url, &["/test/a"]).await;

        node.publish("/test/a", &json!({ "marker": "cut-me" }))
            .await;
        // The connect response carrying it is cut: the client sees a failed connect...
        assert!(matches!(client.next().await, BayeuxEvent::Lost { .. }));
        // ...reconnects on the same session with the old ack, and gets it redelivered.
        assert_eq!(
            client.next().await,
            BayeuxEvent::Subscribed { restored: true }
        );
        assert_eq!(
            client.next_message("/test/a").await,
            json!({ "marker": "cut-me" })
        );
        assert_eq!(proxy.cuts(), 1);

        // Exactly once: the next event is the next message, not a duplicate.
        node.publish("/test/a", &json!("after")).await;
        assert_eq!(client.next_message("/test/a").await, json!("after"));
        assert_eq!(
            node.command("sessions").await["count"],
            1,
            "no re-handshake needed"
        );
        client.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn stops_quietly_and_disconnects_when_nobody_listens() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut node = CometdNode::start(SERVER_TIMEOUT_MS, SERVER_MAX_INTERVAL_MS).await;
        let client = Client::subscribed(node.url(), &["/test/a"]).await;
        let Client { events, task, .. } = client;
        drop(events);
        tokio::time::timeout(EVENT_TIMEOUT, task)
            .await
            .expect("client did not stop in time")
            .expect("client task panicked");
        assert_eq!(node.wait_event("sessionRemoved").await["timeout"], false);
    })
    .await
    .expect("test timed out");
}

/// Serves every HTTP request on 127.0.0.1:0 with `status` and `body`, then closes;
/// the receiver gets one `()` per request answered.
fn canned_http(status: &'static str, body: &'static str) -> (reqwest::Url, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (served_tx, served) = mpsc::channel(64);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let served_tx = served_tx.clone();
            std::thread::spawn(move || {
                // Read the request head and body (bounded) before answering.
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while req.len() < 64 * 1024 {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0usize);
                        if req.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
                let _ = served_tx.try_send(());
            });
        }
    });
    let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/cometd")).expect("url");
    (url, served)
}

#[tokio::test]
async fn handshake_refused_with_401_is_terminal() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (url, _served) = canned_http("401 Unauthorized", "");
        let mut client = Client::start(url, &["/test/a"]);
        match client.next().await {
            BayeuxEvent::Failed { http_status, .. } => assert_eq!(http_status, Some(401)),
            other => panic!("expected Failed, got {other:?}"),
        }
        // The task ends by itself after Failed.
        assert!(client.events.recv().await.is_none());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn garbage_and_5xx_are_retried_not_fatal() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        for (status, body) in [
            ("200 OK", "<html>not json</html>"),
            ("502 Bad Gateway", "{}"),
            ("200 OK", "[1,2]"),
        ] {
            let (url, mut served) = canned_http(status, body);
            let mut client = Client::start(url, &["/test/a"]);
            // Three handshakes answered (retries after 0 s and 1 s of backoff)...
            for _ in 0..3 {
                tokio::time::timeout(EVENT_TIMEOUT, served.recv())
                    .await
                    .expect("retry in time");
            }
            // ...and still no event, no panic, no exit: the client keeps retrying.
            assert!(
                client.events.try_recv().is_err(),
                "unexpected event for {status} {body}"
            );
            assert!(!client.task.is_finished());
            client.stop().await;
        }
    })
    .await
    .expect("test timed out");
}
