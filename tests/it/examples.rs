//! The example clients, run as their READMEs say, against a real gateway and simulator:
//! `examples/node/inbound.js` and `examples/python/inbound.py` take an inbound SMS through
//! accept -> two replies -> complete, every step confirmed.
//!
//! They need the examples' own packages, so they are `#[ignore]`d in a plain `cargo test`;
//! `.ci/run` installs the packages and runs them with `cargo test --test examples -- --ignored`
//! (the Python one finds its interpreter, with grpcio and the generated stubs, in
//! `GWS_EXAMPLES_PYTHON`).

use crate::support::gateway;

use gateway::{Harness, STEP};
use std::path::Path;
use std::process::Command;

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

/// Runs one example script against `h` and checks it went through the whole flow.
async fn run_inbound(h: &Harness, program: &str, dir: &str, script: &str) {
    let addr = h.addr.to_string();
    let mut command = Command::new(program);
    command.current_dir(examples().join(dir)).args([
        script,
        "--addr",
        &addr,
        "--user",
        "agent1",
        "--password",
        "password1",
        "--simulator",
        &h.sim_url,
    ]);
    let out = tokio::time::timeout(
        STEP * 3,
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the example finishes in time")
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}: {stdout}\n{stderr}");
    assert!(stdout.contains("Hi, where is my parcel?"), "{stdout}");
    for step in [
        "Accept: OUTCOME_STATUS_CONFIRMED (Chatting)",
        "Complete: OUTCOME_STATUS_CONFIRMED (Completed)",
    ] {
        assert!(stdout.contains(step), "{script} lacks {step:?}: {stdout}");
    }
    assert_eq!(
        stdout
            .matches("SendMessage: OUTCOME_STATUS_CONFIRMED (Text")
            .count(),
        2,
        "{stdout}"
    );
    // The simulator agrees: the session the script answered is Completed.
    let requests = h.requests("agent1").await;
    let completed = requests
        .iter()
        .filter(|r| r["body"]["operationName"] == "Complete")
        .count();
    assert_eq!(completed, 1, "{requests:?}");
}

#[tokio::test]
#[ignore = "needs `npm ci --prefix examples/node`; run by .ci/run"]
async fn node_example_answers_an_inbound_sms() {
    let h = Harness::with_defaults().await;
    run_inbound(&h, "node", "node", "inbound.js").await;
}

#[tokio::test]
#[ignore = "needs GWS_EXAMPLES_PYTHON (grpcio and generated stubs); run by .ci/run"]
async fn python_example_answers_an_inbound_sms() {
    let python = std::env::var("GWS_EXAMPLES_PYTHON")
        .expect("GWS_EXAMPLES_PYTHON names a Python with examples/python/requirements.txt");
    let h = Harness::with_defaults().await;
    run_inbound(&h, &python, "python", "inbound.py").await;
}
