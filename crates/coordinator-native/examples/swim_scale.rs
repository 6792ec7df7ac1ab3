//! The gossip at scale, on the simulated network (virtual time, seeded):
//! for 10, 100 and 1,000 members, the time until every member knows of a
//! death, false suspicions and deaths under 5% and 20% loss, and datagram
//! bytes per second per member.
//!
//! `cargo run --release -p coordinator-native --example swim_scale [SIZES…]`

use coordinator_core::MemberState;
use coordinator_native::swim::sim::Sim;
use coordinator_native::swim::{State, SwimConfig};
use std::time::{Duration, Instant};

fn config() -> SwimConfig {
    // The defaults: heartbeat 250 ms, suspect 750 ms, dead 1250 ms.
    SwimConfig::from_timing(
        Duration::from_millis(250),
        Duration::from_millis(750),
        Duration::from_millis(1250),
    )
}

fn bytes(sim: &Sim) -> u64 {
    sim.nodes.values().map(|n| n.bytes_sent).sum()
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "| members | every member knows of a death | bytes/s per member (steady) | 5% loss, 60 s: false suspicion reports / deaths | 20% loss, 60 s: false suspicion reports / deaths | wall time |"
    );
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let wall = Instant::now();
        let mut sim = Sim::new(config(), n);
        for id in 1..=n {
            sim.start_node(id, 1, &[1, 2]);
        }
        let formed = sim.run_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            Sim::all_alive,
        );
        // Steady state.
        sim.run(Duration::from_secs(5));
        let before = bytes(&sim);
        let window = Duration::from_secs(10);
        sim.run(window);
        let rate = (bytes(&sim) - before) as f64 / n as f64 / window.as_secs_f64();
        // A death.
        let victim = n / 2 + 1;
        sim.kill(victim);
        let known = sim.run_until(Duration::from_secs(30), Duration::from_millis(10), |sim| {
            sim.all_see(victim, State::Dead)
        });
        sim.run(Duration::from_secs(5));
        let mut loss = Vec::new();
        for percent in [5u32, 20] {
            let from = sim.elapsed();
            sim.loss = f64::from(percent) / 100.0;
            sim.run(Duration::from_secs(60));
            sim.heal();
            sim.run(Duration::from_secs(5));
            loss.push((
                sim.false_reports(MemberState::Suspect, from),
                sim.false_reports(MemberState::Dead, from),
            ));
        }
        println!(
            "| {n} | {} | {rate:.0} | {} / {} | {} / {} | {:.0} s{} |",
            known.map_or("not within 30 s".into(), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            )),
            loss[0].0,
            loss[0].1,
            loss[1].0,
            loss[1].1,
            wall.elapsed().as_secs_f64(),
            if formed.is_some() {
                ""
            } else {
                " (did not form within 60 s)"
            },
        );
    }
}
