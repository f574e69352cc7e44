//! Shared by the benches: where criterion writes its results, and this run's medians, so each
//! bench can print its figures (and ratios) at the end of a run.

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

/// The median (ns) criterion measured for `group/bench` in this run: `None` when absent or left
/// over from a run before `since`.
#[allow(dead_code)] // budget.rs reads its medians through its own results table
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
