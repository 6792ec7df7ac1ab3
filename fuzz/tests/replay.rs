//! Every input kept for the fuzz targets, run through them in the normal test
//! suite: the seed corpora (`corpus/<target>/`) and the inputs that once made
//! a target fail (`regressions/<target>/`, each named after what it found).
//! Seconds, not minutes: `scripts/fuzz.sh` runs the real campaign.

use cap::Cap;
use std::alloc::System;
use std::path::{Path, PathBuf};

/// What one input may make a target hold at once, beyond what was held
/// before it, as `scripts/fuzz.sh` bounds libFuzzer (`-malloc_limit_mb`): a
/// decoder must not reserve what a peer merely announces. An allocation past
/// it fails, which aborts this test with the input's name printed last.
const MEMORY_LIMIT: usize = 64 << 20;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_kept_input_runs_through_its_target_without_a_failure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut summary = Vec::new();
    for target in coordinator_fuzz::TARGETS {
        let seeds = inputs(&root.join("corpus").join(target));
        let regressions = inputs(&root.join("regressions").join(target));
        assert!(
            !seeds.is_empty(),
            "no seed corpus for fuzz target {target}: run `cargo run -p coordinator-fuzz --bin make-seeds`"
        );
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            eprintln!("{target}: {}", path.display());
            ALLOCATOR
                .set_limit(ALLOCATOR.allocated() + MEMORY_LIMIT)
                .unwrap();
            let outcome = std::panic::catch_unwind(|| coordinator_fuzz::run(target, &data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} failed on {}",
                path.display()
            );
            ALLOCATOR.set_limit(usize::MAX).unwrap();
        }
        summary.push(format!(
            "{target}: {} seeds, {} regressions",
            seeds.len(),
            regressions.len()
        ));
    }
    println!("{}", summary.join("; "));
}
