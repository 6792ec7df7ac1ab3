//! `coordinator check-config FILE`

use coordinator::CoordinatorConfig;
use std::path::Path;
use std::process::ExitCode;

/// Exit 0 with the normalized configuration, or 2 with every error.
pub fn run(file: &Path) -> ExitCode {
    let config = match CoordinatorConfig::from_file(file) {
        Ok(config) => config,
        Err(errors) => return fail(file, &errors),
    };
    // Secrets, and the texts inside the configuration (a Zenoh `config`,
    // Kafka `properties`, a NATS credentials document), as `start` reads them.
    if let Err(errors) = coordinator::check(&config) {
        return fail(file, &errors);
    }
    for warning in config.warnings() {
        eprintln!("{}: warning: {warning}", file.display());
    }
    println!("{}", config.to_json_pretty());
    ExitCode::SUCCESS
}

fn fail(file: &Path, errors: &coordinator::ConfigErrors) -> ExitCode {
    let count = errors.0.len();
    eprintln!(
        "{}: {count} error{}",
        file.display(),
        if count == 1 { "" } else { "s" }
    );
    for error in &errors.0 {
        eprintln!("  {error}");
    }
    ExitCode::from(2)
}
