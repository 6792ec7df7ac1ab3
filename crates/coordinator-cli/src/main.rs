//! The `coordinator` command: check a configuration, watch a demo cluster,
//! measure a carrier, or run one node by hand.

#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Broadcast, membership and Raft message delivery for clustered servers"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file (JSON, TOML or YAML, by extension): print it normalized, or every error with its field path.
    CheckConfig { file: PathBuf },
    /// Start a small cluster in this process, broadcast, request, then kill a node and watch it detected.
    Demo {
        /// Nodes in the demo cluster.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=20))]
        nodes: u64,
    },
    /// Measure broadcast throughput, end-to-end latency and request/reply latency between two nodes.
    Bench(cli::bench::BenchArgs),
    /// Run Native nodes under traffic with every core kept busy, and count suspicions and deaths.
    #[cfg(feature = "native")]
    Soak(cli::soak::SoakArgs),
    /// Write a self-signed TLS certificate and key (PEM) for the Native carrier's certPath and keyPath.
    #[cfg(feature = "native")]
    GenCert {
        /// Where to write the certificate.
        #[arg(long, default_value = "coordinator-cert.pem")]
        cert: PathBuf,
        /// Where to write the private key (created readable by its owner only).
        #[arg(long, default_value = "coordinator-key.pem")]
        key: PathBuf,
        /// Names the certificate is valid for (set one of them as tlsDomain to have it checked).
        #[arg(long = "name", default_values_t = [String::from("localhost")])]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Run the engine's deterministic simulator: one seed (to replay a failure exactly) or a search over many.
    Simulate(cli::simulate::SimulateArgs),
    /// Run one node from a configuration file; lines typed on standard input are broadcast.
    Node {
        #[arg(long)]
        config: PathBuf,
        /// Topic to broadcast on and listen to.
        #[arg(long, default_value = "chat")]
        topic: String,
        /// Broadcast each line read from standard input, and leave at its
        /// end. Without it the node never reads standard input (as under a
        /// service manager) and runs until SIGTERM or SIGINT.
        #[arg(long)]
        stdin: bool,
        /// Serve the node's Prometheus metrics (GET /metrics) and its view of
        /// the members (GET /members, read by `coordinator members`) over
        /// HTTP on this address, such as 127.0.0.1:9464.
        #[arg(long, alias = "metrics", value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
    /// List the members as a running node sees them (its --admin address): id, state, incarnation, address, for how long.
    Members {
        /// The node's admin address (`coordinator node --admin ADDR`).
        #[arg(long, value_name = "ADDR")]
        admin: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep watching, printing each change, until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch asks.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::CheckConfig { file } = &args.command {
        return cli::check_config::run(file);
    }
    if let Command::Simulate(simulate) = &args.command {
        return cli::simulate::run(simulate);
    }
    #[cfg(feature = "native")]
    if let Command::GenCert {
        cert,
        key,
        names,
        force,
    } = &args.command
    {
        return cli::gen_cert::run(cert, key, names, *force);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.command {
            Command::CheckConfig { .. } | Command::Simulate(_) => unreachable!("handled above"),
            #[cfg(feature = "native")]
            Command::GenCert { .. } => unreachable!("handled above"),
            Command::Demo { nodes } => cli::demo::run(nodes).await,
            Command::Bench(bench) => cli::bench::run(bench).await,
            #[cfg(feature = "native")]
            Command::Soak(soak) => cli::soak::run(soak).await,
            Command::Node {
                config,
                topic,
                stdin,
                admin,
            } => cli::node::run(&config, &topic, stdin, admin).await,
            Command::Members {
                admin,
                json,
                watch,
                interval,
            } => cli::members::run(&admin, json, watch, interval).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
