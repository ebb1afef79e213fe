//! The `gws-sms-gateway` binary: parse the command line, set up logging, and hand over to
//! the library (`server::run`, the simulator, or the built-in client).
#![forbid(unsafe_code)]

use clap::Parser;
use gws_sms_gateway::config::{self, Cli, Command, EX_USAGE, ServeArgs, ServeConfig};
use gws_sms_gateway::{client, server, simulator};
use std::process::ExitCode;

fn main() -> ExitCode {
    // No subcommand means `serve`, so `cargo run` starts the gateway.
    let parsed = Cli::try_parse().and_then(|cli| match cli.command {
        Some(command) => Ok(command),
        None => Cli::try_parse_from(["gws-sms-gateway", "serve"])
            .map(|c| c.command.expect("serve given")),
    });
    let command = match parsed {
        Ok(command) => command,
        Err(e) if e.use_stderr() => {
            // One clear line, not clap's usage block.
            let line = e.to_string();
            eprintln!("{}", line.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_tracing(matches!(command, Command::Client(_)));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match command {
            Command::Serve(args) => serve(args).await,
            Command::Simulate(args) => simulate(args).await,
            Command::Client(args) => client::run(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match ServeConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.args.listen);
            return ExitCode::from(69);
        }
    };
    match server::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(args: config::SimulateArgs) -> ExitCode {
    let agents = match config::simulator_agents(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let sim_config = simulator::SimulatorConfig {
        agents,
        csrf: !args.no_csrf,
        cometd: simulator::cometd::CometdConfig {
            timeout: args.cometd_timeout,
            max_interval: args.cometd_max_interval,
            ..Default::default()
        },
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(69);
        }
    };
    let url = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => String::new(),
    };
    tracing::info!(url = %url, csrf = sim_config.csrf, "GWS simulator serving");
    let sim = simulator::Simulator::new(&sim_config, &url);
    simulator::serve(listener, sim, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_tracing(client: bool) {
    let default = if client { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: logs piped to files or collectors stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
