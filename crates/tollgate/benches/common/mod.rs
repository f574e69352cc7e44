//! Shared by the benches: where criterion writes its results, and this run's medians, so each
//! bench can print its figures (and ratios) at the end of a run.
//! Each bench compiles this module on its own and uses a different part of it, so unused items
//! are expected here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Criterion's output directory: `$CARGO_TARGET_DIR/criterion`, else the nearest `criterion`
/// directory above the bench executable.
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(t).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|p: &Path| p.join("criterion"))
        .find(|p| p.is_dir())
}

/// Starts a bench's closing table: prints its title, and returns criterion's output directory
/// when this run measured something (not `--test` mode, directory found); says why otherwise.
pub fn table_dir(title: &str) -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let test_mode = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
    println!();
    println!("== {title} (criterion medians, this run) ==");
    if test_mode {
        println!("test mode: every benchmark ran once; no measurements.");
        return None;
    }
    let dir = criterion_dir();
    if dir.is_none() {
        println!("no measurements: criterion's output directory was not found");
    }
    dir
}

/// The median (ns) criterion measured for `group/bench` in this run: `None` when absent or left
/// over from a run before `since`.
pub fn median(dir: &Path, group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = dir
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Prints one line per `(bench, description, target ns)` row that has a median in this run, with
/// "met" / "MISSED" against the target; says so when no row had one.
pub fn print_rows(dir: &Path, group: &str, rows: &[(&str, &str, Option<f64>)], since: SystemTime) {
    let mut printed = 0;
    for (bench, what, target) in rows {
        let Some(ns) = median(dir, group, bench, since) else {
            continue;
        };
        let verdict = match target {
            Some(t) if ns <= *t => format!("<= {t} ns: met"),
            Some(t) => format!("<= {t} ns: MISSED"),
            None => String::new(),
        };
        println!("{what:<52} {ns:>9.1} ns  {verdict}");
        printed += 1;
    }
    if printed == 0 {
        println!("no measurements from this run under {}", dir.display());
    }
}

/// The measurement settings every bench uses: short enough that a whole bench stays within a few
/// minutes on two cores, with command-line flags (`--test`, filters) applied.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30)
        .without_plots()
        .configure_from_args()
}
