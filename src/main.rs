//! The `gws-sms-gateway` binary: parse the command line, set up logging and traces, and hand
//! over to the library (`server::run`, the simulator, or the built-in client). Exit codes:
//! 0 after a clean drain; 2 the command line does not parse (clap's message); 64 bad
//! configuration; 69 a port cannot be bound; 75 the drain timed out (calls still in flight
//! were cut); 1 any other failure.
#![forbid(unsafe_code)]

use clap::Parser;
#[cfg(feature = "demo")]
use gws_simulator as simulator;
use gws_sms_gateway::client;
use gws_sms_gateway::config::{Cli, Command, EX_USAGE, Mode, ServeArgs, ServeConfig};
use gws_sms_gateway::server::{self, ServerError};
use gws_sms_gateway::telemetry::Telemetry;
use std::process::ExitCode;

/// The command line does not parse (clap's exit code).
const EX_ARGUMENTS: u8 = 2;
/// A port could not be bound (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;
/// The drain ran out of time and cut calls (sysexits EX_TEMPFAIL).
const EX_DRAIN_TIMED_OUT: u8 = 75;

fn main() -> ExitCode {
    // No subcommand means `demo`, so `cargo run` starts the gateway with its simulator; a
    // build without the simulator (no `demo` feature) has only `serve` to run.
    let default_command = if cfg!(feature = "demo") {
        "demo"
    } else {
        "serve"
    };
    let parsed = Cli::try_parse().and_then(|cli| match cli.command {
        Some(command) => Ok((cli.log_format, command)),
        None => Cli::try_parse_from(["gws-sms-gateway", default_command])
            .map(|c| (cli.log_format, c.command.expect("a command given"))),
    });
    let (log_format, command) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // clap's whole message: what is missing, the usage line, its tips ("a similar
            // argument exists"); exit 2 for an argument error, 0 for --help and --version.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EX_ARGUMENTS));
        }
    };
    // Configuration is validated before anything starts: a bad one is exit 64, unbound.
    let gateway = match &command {
        Command::Serve(args) => Some(check(Mode::Serve, args.clone())),
        #[cfg(feature = "demo")]
        Command::Demo(args) => Some(check(Mode::Demo, args.clone())),
        _ => None,
    };
    let gateway = match gateway.transpose() {
        Ok(g) => g,
        Err(code) => return code,
    };
    let check_only = gateway.as_ref().is_some_and(|c| c.args.check_config);
    if check_only && gateway.as_ref().is_some_and(|c| c.cluster.is_none()) {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if check_only {
        // Cluster mode: the configuration is usable only if NATS answers.
        let cluster = gateway.and_then(|c| c.cluster);
        return runtime.block_on(async {
            if let Some(cluster) = cluster
                && let Err(e) = gws_sms_gateway::cluster::Cluster::check(&cluster).await
            {
                eprintln!("error: {e}");
                return ExitCode::from(EX_USAGE);
            }
            println!("configuration OK");
            ExitCode::SUCCESS
        });
    }
    runtime.block_on(async {
        let default_filter = if matches!(command, Command::Client(_)) {
            "warn"
        } else {
            "info"
        };
        let otlp = gateway.as_ref().and_then(|c| c.args.otlp_endpoint.as_ref());
        let telemetry = match Telemetry::init(log_format, default_filter, otlp) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        let code = match (command, gateway) {
            (Command::Serve(_), Some(config)) => serve(config).await,
            #[cfg(feature = "demo")]
            (Command::Demo(_), Some(config)) => serve(config).await,
            #[cfg(feature = "demo")]
            (Command::Simulate(args), _) => simulate(args).await,
            (Command::Client(args), _) => client::run(args).await,
            _ => unreachable!("gateway commands have a configuration"),
        };
        telemetry.shutdown().await;
        code
    })
}

/// Validates a gateway configuration, or says why not (exit 64).
fn check(mode: Mode, args: ServeArgs) -> Result<ServeConfig, ExitCode> {
    ServeConfig::new(mode, args).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EX_USAGE)
    })
}

async fn serve(config: ServeConfig) -> ExitCode {
    // Cluster mode: an unreachable NATS is a configuration error, found before any port is
    // bound (the server connects again for itself).
    if let Some(cluster) = &config.cluster
        && let Err(e) = gws_sms_gateway::cluster::Cluster::check(cluster).await
    {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let listener = match tokio::net::TcpListener::bind(config.args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.args.listen);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    match server::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ServerError::DrainTimedOut(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_DRAIN_TIMED_OUT)
        }
        Err(e @ ServerError::Cluster(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e @ ServerError::Listen { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "demo")]
async fn simulate(args: gws_sms_gateway::config::SimulateArgs) -> ExitCode {
    let agents = match gws_sms_gateway::config::simulator_agents(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let sim_config = simulator::SimulatorConfig {
        agents,
        csrf: !args.no_csrf,
        // The seed page's pattern (no referenceId in replies) is a control-API switch.
        reply_reference_ids: true,
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
            return ExitCode::from(EX_UNAVAILABLE);
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

/// SIGINT or SIGTERM. The SIGTERM handler is installed by this call, not when the future
/// first runs, so a SIGTERM right after the gateway announces itself still drains it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match term {
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
}
