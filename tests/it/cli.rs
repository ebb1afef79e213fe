//! The binary as a newcomer runs it: `serve` with the embedded simulator, `client events` and
//! `client delete-user-data` as separate processes, SIGTERM; a command line that does not parse
//! -> clap's whole message and exit 2, bad configuration -> one line and exit 64; the client's
//! messages (missing credentials, a refused connection, each command's help) and its JSON.

use crate::support::process;

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
        &["serve", "--default-user", "only-user"][..],
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

/// Runs the binary to its end: exit code, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("GWS_URL")
        .env_remove("GATEWAY_ADDR")
        .env_remove("GWS_USER")
        .env_remove("GWS_PASSWORD")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_command_line_that_does_not_parse_gets_clap_s_whole_message_and_exit_2() {
    for args in [
        &["serve", "--listen", "not-an-address"][..],
        &["serve", "--gws-url", "ftp://x"],
        &["serve", "--upstream-timeout", "soon"],
        &["serve", "--no-such-flag"],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("For more information, try '--help'."),
            "{args:?}: {stderr}"
        );
    }
    // A missing argument is named, with the command's usage.
    let (code, _, stderr) = run(&["client", "accept"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--session <SESSION>")
            && stderr.contains("Usage: gws-sms-gateway client accept --session <SESSION>"),
        "{stderr}"
    );
    // clap's tips are kept.
    let (code, _, stderr) = run(&["client", "accept", "--sesion", "S"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("tip: a similar argument exists: '--session'"),
        "{stderr}"
    );
}

#[test]
fn client_flags_go_before_or_after_the_command_and_every_command_s_help_lists_them() {
    for args in [
        &["client", "accept", "--help"][..],
        &["client", "sessions", "--help"],
        &["client", "events", "--help"],
    ] {
        let (code, stdout, _) = run(args);
        assert_eq!(code, Some(0), "{args:?}");
        for flag in ["--addr <ADDR>", "--user <USER>", "--password <PASSWORD>"] {
            assert!(stdout.contains(flag), "{args:?} lacks {flag}: {stdout}");
        }
    }
    // Given after the command, the flags are taken (here: a half credential is refused for
    // what it is, before anything connects).
    let (code, _, stderr) = run(&["client", "sessions", "--user", "agent1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--user and --password go together"),
        "{stderr}"
    );
}

#[test]
fn each_mode_s_help_lists_only_its_flags() {
    let (code, serve, _) = run(&["serve", "--help"]);
    assert_eq!(code, Some(0));
    assert!(serve.contains("--gws-url"), "{serve}");
    assert!(!serve.contains("--simulator-listen"), "{serve}");
    let (code, demo, _) = run(&["demo", "--help"]);
    assert_eq!(code, Some(0));
    assert!(demo.contains("--simulator-listen"), "{demo}");
    assert!(!demo.contains("--gws-url"), "{demo}");
}

#[test]
fn a_refused_connection_asks_whether_the_gateway_runs_there() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for given in [addr.clone(), format!("http://{addr}")] {
        let (code, _, stderr) = run(&["client", "--addr", &given, "sessions"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!("error: connection refused: is the gateway running at http://{addr}?")
        );
    }
    // The client speaks plaintext only: an https:// address is refused for that reason.
    let (code, _, stderr) = run(&["client", "--addr", "https://localhost:15051", "sessions"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("plaintext gRPC only"), "{stderr}");
    // HOST without a port would silently mean port 80.
    let (code, _, stderr) = run(&["client", "--addr", "localhost", "sessions"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no port"), "{stderr}");
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
    // HOST:PORT, as grpcurl and the Node example take it.
    let addr = field(&line, "listen=");
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
    proto_json(&wait_for(&events_out, "NOTICE_KIND_SUBSCRIBED"));
    proto_json(&wait_for(&events_out, "\"snapshot\""));

    // Without credentials, the answer says how to give them.
    let (code, _, err) = run(&["client", "--addr", &addr, "sessions"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Unauthenticated")
            && err.contains("--user USER --password PASSWORD")
            && err.contains("GWS_USER and GWS_PASSWORD"),
        "{err}"
    );

    // A customer writes (the simulator's control API), the agent answers with the client.
    let created = post(
        &simulator,
        "/simulator/agents/agent1/smssessions",
        r#"{"text":"Hi, where is my parcel?"}"#,
    );
    let id = created["id"].as_str().unwrap().to_string();
    let invited = proto_json(&wait_for(&events_out, "\"state\":\"Invited\""));
    assert_eq!(
        invited["event"]["notificationType"], "StatusChange",
        "{invited}"
    );
    let (code, out, err) = client(&["sessions"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(&id) && l.contains("Invited")),
        "{out}"
    );
    let (_, out, _) = client(&["transcript", "--session", &id]);
    assert!(out.contains("Hi, where is my parcel?"), "{out}");
    for line in out.lines() {
        let message: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = message["time"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(time.parse::<prost_types::Timestamp>().is_ok(), "{line}");
    }

    let (code, out, err) = client(&["accept", "--session", &id, "--nickname", "Ann", "--wait"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("Accept accepted by GWS") && out.contains("confirmed:"),
        "{out}"
    );
    assert!(out.contains("\"state\":\"Chatting\""), "{out}");
    let joined = proto_json(&wait_for(&events_out, "ParticipantJoined"));
    assert!(
        joined["event"]["messages"][0]["time"].is_string(),
        "{joined}"
    );
    for text in ["Hello, this is Ann", "It arrives tomorrow"] {
        let (code, _, err) = client(&["send-message", "--session", &id, "--text", text]);
        assert_eq!(code, Some(0), "{err}");
        proto_json(&wait_for(&events_out, text));
    }
    let (code, out, err) = client(&["complete", "--session", &id, "--wait"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"state\":\"Completed\""), "{out}");
    let confirmed = out
        .lines()
        .find_map(|l| l.strip_prefix("confirmed: "))
        .unwrap_or_else(|| panic!("{out}"));
    proto_json(confirmed);
    proto_json(&wait_for(&events_out, "\"state\":\"Completed\""));
    let (code, _, err) = client(&["send-message", "--session", &id, "--text", "late"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("FailedPrecondition") && err.contains("GWS_STATUS_2"),
        "{err}"
    );
    // Bad arguments are refused by the client before any call.
    let (code, _, err) = client(&["send-url", "--session", &id]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--url <URL>"), "{err}");
}

/// One `client events` line, checked against the proto3 JSON mapping's rules: the time is
/// RFC 3339, and no field is null (user data is GWS's own JSON, where null is a value).
fn proto_json(line: &str) -> serde_json::Value {
    fn no_null(v: &serde_json::Value, at: &str, line: &str) {
        match v {
            serde_json::Value::Null => panic!("{at} is null: {line}"),
            serde_json::Value::Array(a) => a.iter().for_each(|v| no_null(v, at, line)),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| *k != "userData")
                .for_each(|(k, v)| no_null(v, k, line)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    no_null(&v, "", line);
    let time = v["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no time: {line}"));
    assert!(
        time.ends_with('Z') && time.parse::<prost_types::Timestamp>().is_ok(),
        "{line}"
    );
    v
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

#[test]
fn an_unreachable_nats_is_one_line_and_exit_64_before_binding() {
    // Nothing listens on the port just freed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nats = format!("nats://{}", free.local_addr().unwrap());
    drop(free);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    for check in [true, false] {
        let mut args = vec![
            "serve",
            "--gws-url",
            "https://gws.example:8443",
            "--listen",
            &listen,
            "--nats-url",
            &nats,
            "--cluster-secret",
            "0123456789abcdef",
        ];
        if check {
            args.push("--check-config");
        }
        let (code, _, stderr) = run(&args);
        // 64, not 69: NATS is checked before the (taken) port would be bound.
        assert_eq!(code, Some(64), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("cannot connect to NATS"), "{stderr}");
    }
    let (code, _, stderr) = run(&["serve", "--gws-url", "http://g:1", "--nats-url", "http://x"]);
    assert_eq!(
        code,
        Some(64),
        "a bad URL is a configuration error: {stderr}"
    );
}
