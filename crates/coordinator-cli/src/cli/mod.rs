pub mod admin;
pub mod bench;
pub mod check_config;
pub mod demo;
#[cfg(feature = "native")]
pub mod gen_cert;
pub mod members;
pub mod node;
pub mod raft_bench;
#[cfg(feature = "kafka")]
pub mod raw_kafka;
#[cfg(feature = "nats")]
pub mod raw_nats;
#[cfg(feature = "redis")]
pub mod raw_redis;
#[cfg(feature = "native")]
pub mod raw_tls;
#[cfg(feature = "zenoh")]
pub mod raw_zenoh;
pub mod simulate;
#[cfg(feature = "native")]
pub mod soak;

/// Logs to standard error, `RUST_LOG` overriding `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal, not in a service's log.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Milliseconds with one decimal, for human output.
pub fn ms(duration: std::time::Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
