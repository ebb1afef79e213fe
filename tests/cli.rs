//! The binary as a newcomer runs it: `serve` with the embedded simulator, `client events` and
//! `client delete-user-data` as separate processes, SIGTERM; and bad configuration -> exit 64.

#[path = "support/process.rs"]
mod process;

use process::{forward_lines, signal};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gws-sms-gateway");
const STEP: Duration = Duration::from_secs(30);

/// A child process that is killed if the test fails before it exits.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the binary; its stdout and stderr lines arrive on the returned channel.
fn spawn(args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    spawn_with_env(args, &[])
}

fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("GWS_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let (tx, rx) = mpsc::channel();
    forward_lines(&mut child, move |line| {
        let _ = tx.send(line);
    });
    (Proc(child), rx)
}

/// The first line containing `needle`.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {needle:?} within {STEP:?}"),
        }
    }
}

fn wait_exit(proc: &mut Proc) -> std::process::ExitStatus {
    let child = &mut proc.0;
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    for args in [
        &["serve", "--listen", "not-an-address"][..],
        &["serve", "--gws-url", "ftp://x"],
        &["serve", "--upstream-timeout", "soon"],
        &["serve", "--default-user", "only-user"],
        &["serve", "--no-such-flag"],
        // serve never falls back to the simulator; the simulator stays on loopback.
        &["serve"],
        &["serve", "--listen", "0.0.0.0:0"],
        &["demo", "--simulator-listen", "0.0.0.0:0"],
        &["demo", "--gws-url", "http://gws:8080"],
        // The honest-resume rule: the replay buffer holds at least a stream's queue.
        &[
            "demo",
            "--stream-buffer",
            "100",
            "--replay-max-events",
            "50",
        ],
        &["simulate", "--listen", "0.0.0.0:8090"],
        &[
            "serve",
            "--gws-url",
            "http://gws",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ],
        &[
            "serve",
            "--gws-url",
            "http://gws",
            "--gws-ca",
            "/nonexistent.pem",
        ],
        &[
            "serve",
            "--gws-url",
            "http://gws",
            "--check-config",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/x",
        ],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("GWS_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn check_config_validates_without_binding() {
    // The port is taken: a binding run would fail with 69; --check-config does not bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--gws-url",
            "https://gws.example:8443",
            "--listen",
            &addr,
        ])
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    let out = Command::new(BIN)
        .args([
            "serve",
            "--gws-url",
            "https://gws.example:8443",
            "--listen",
            &addr,
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
}

#[test]
fn no_subcommand_is_demo_with_a_banner() {
    // The default address is 127.0.0.1:50051; the environment moves it off a fixed port.
    let (mut server, out) = spawn_with_env(&[], &[("GATEWAY_LISTEN", "127.0.0.1:0")]);
    wait_for(&out, "DEMO MODE");
    wait_for(&out, "started the embedded GWS simulator");
    // SIGHUP without TLS: nothing to reload, and the gateway keeps running (the signal's
    // default action would have ended it undrained).
    signal(&server.0, "-HUP");
    wait_for(&out, "SIGHUP: no TLS files to reload");
    signal(&server.0, "-TERM");
    assert!(wait_exit(&mut server).success());
}

#[test]
fn newcomer_flow_serve_events_delete_then_sigterm() {
    let (mut server, server_out) = spawn(&["demo", "--listen", "127.0.0.1:0"]);
    let line = wait_for(&server_out, "gateway serving gRPC");
    let listen = line
        .split("listen=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the log names the listen address")
        .to_string();
    wait_for(&server_out, "DEMO MODE");
    wait_for(&server_out, "started the embedded GWS simulator");
    let addr = format!("http://{listen}");
    let auth = [
        "client",
        "--addr",
        &addr,
        "--user",
        "agent1",
        "--password",
        "password1",
    ];

    let mut events_args = auth.to_vec();
    events_args.push("events");
    let (mut events, events_out) = spawn(&events_args);
    wait_for(&events_out, "NOTICE_KIND_SUBSCRIBED");

    let mut delete_args = auth.to_vec();
    delete_args.extend([
        "delete-user-data",
        "--session",
        "0071023821aec011",
        "--key",
        "UserData1",
    ]);
    let out = Command::new(BIN).args(&delete_args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("DeleteUserData accepted") && stdout.contains("referenceId"),
        "{stdout}"
    );

    let event: serde_json::Value =
        serde_json::from_str(&wait_for(&events_out, "PropertiesUpdated")).unwrap();
    let user_data = &event["event"]["userData"];
    assert!(user_data.get("UserData1").is_none(), "{event}");
    assert_eq!(user_data["UserData2"], 123456789);
    assert_eq!(user_data["IdentifyCreateContact"], "3");

    // An error prints its code and details, exit 1.
    let mut bad = auth.to_vec();
    bad.extend(["delete-user-data", "--session", "nope", "--key", "k"]);
    let out = Command::new(BIN).args(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("NotFound") && stderr.contains("GWS_STATUS_6"),
        "{stderr}"
    );

    // SIGTERM: the events stream ends with UNAVAILABLE, the server exits 0.
    signal(&server.0, "-TERM");
    wait_for(&events_out, "Unavailable");
    assert_eq!(wait_exit(&mut events).code(), Some(1));
    assert!(wait_exit(&mut server).success());
    wait_for(&server_out, "gateway stopped");
}

#[test]
fn inbound_flow_with_the_built_in_client() {
    let (_server, server_out) = spawn(&["demo", "--listen", "127.0.0.1:0"]);
    let line = wait_for(&server_out, "gateway serving gRPC");
    let field = |line: &str, key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_string()
    };
    let addr = format!("http://{}", field(&line, "listen="));
    let simulator = field(
        &wait_for(&server_out, "started the embedded GWS simulator"),
        "simulator=",
    );
    let client = |args: &[&str]| {
        let mut all = vec![
            "client",
            "--addr",
            &addr,
            "--user",
            "agent1",
            "--password",
            "password1",
        ];
        all.extend_from_slice(args);
        let out = Command::new(BIN).args(&all).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stdout, stderr)
    };
    let (_events, events_out) = {
        let mut args = vec![
            "client",
            "--addr",
            &addr,
            "--user",
            "agent1",
            "--password",
            "password1",
        ];
        args.extend(["events", "--snapshot"]);
        spawn(&args)
    };
    wait_for(&events_out, "NOTICE_KIND_SUBSCRIBED");
    wait_for(&events_out, "\"snapshot\"");

    // A customer writes (the simulator's control API), the agent answers with the client.
    let created = post(
        &simulator,
        "/simulator/agents/agent1/smssessions",
        r#"{"text":"Hi, where is my parcel?"}"#,
    );
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&events_out, "\"state\":\"Invited\"");
    let (code, out, err) = client(&["sessions"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(&id) && l.contains("Invited")),
        "{out}"
    );
    let (_, out, _) = client(&["transcript", "--session", &id]);
    assert!(out.contains("Hi, where is my parcel?"), "{out}");

    let (code, out, err) = client(&["accept", "--session", &id, "--nickname", "Ann", "--wait"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("Accept accepted by GWS") && out.contains("confirmed:"),
        "{out}"
    );
    assert!(out.contains("\"state\":\"Chatting\""), "{out}");
    wait_for(&events_out, "ParticipantJoined");
    for text in ["Hello, this is Ann", "It arrives tomorrow"] {
        let (code, _, err) = client(&["send-message", "--session", &id, "--text", text]);
        assert_eq!(code, Some(0), "{err}");
        wait_for(&events_out, text);
    }
    let (code, out, err) = client(&["complete", "--session", &id, "--wait"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"state\":\"Completed\""), "{out}");
    wait_for(&events_out, "\"state\":\"Completed\"");
    let (code, _, err) = client(&["send-message", "--session", &id, "--text", "late"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("FailedPrecondition") && err.contains("GWS_STATUS_2"),
        "{err}"
    );
    // Bad arguments are refused by the client before any call.
    let (code, _, err) = client(&["send-url", "--session", &id]);
    assert_eq!(code, Some(64), "{err}");
}

/// A minimal HTTP/1.1 POST (the control API of the simulator), answering the JSON body.
fn post(base: &str, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = std::net::TcpStream::connect(&host).expect("simulator reachable");
    conn.set_read_timeout(Some(STEP)).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    let (_, json) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {reply}"))
}
