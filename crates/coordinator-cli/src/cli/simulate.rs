//! `coordinator simulate`: the deterministic simulator of the engine, for one
//! seed (to replay a failure exactly) or for a long search over many.

use coordinator::testing::simulator::{self, Options};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Replay this one seed and print what it found.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Search this many seeds, from --first, stopping at the first failure.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed of a search.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Nodes in each simulated cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=64))]
    nodes: u64,
    /// Seconds of simulated time with faults and traffic, per seed.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Without faults (traffic only).
    #[arg(long)]
    no_faults: bool,
}

pub fn run(args: &SimulateArgs) -> ExitCode {
    let options = |seed| Options {
        active: Duration::from_secs(args.seconds.max(1)),
        faults: !args.no_faults,
        ..Options::new(seed, args.nodes as usize)
    };
    if let Some(seed) = args.seed {
        let report = simulator::run(&options(seed));
        println!("{}", report.summary());
        return if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let started = Instant::now();
    let (mut runs, mut steps, mut gaps, mut deaths) = (0u64, 0u64, 0u64, 0u64);
    for seed in args.first..args.first.saturating_add(args.seeds) {
        let report = simulator::run(&options(seed));
        runs += 1;
        steps += report.steps;
        gaps += report.gaps;
        deaths += report.deaths;
        if !report.passed() {
            println!("{}", report.summary());
            println!(
                "failed at seed {seed}, after {runs} seeds in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return ExitCode::FAILURE;
        }
        if runs % 1000 == 0 {
            eprintln!(
                "{runs} seeds passed ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{runs} seeds of {} nodes passed in {:.1} s ({steps} steps, {gaps} gaps reported, {deaths} deaths declared)",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
