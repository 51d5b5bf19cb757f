//! `profile.txt` at the end of a profiled run (`run.profile`): the executor's per-op timings as a table, the
//! per-kind part echoed on the terminal.

use bevy_ecs::prelude::*;
use ecstrain_components::{Graph, RunFailure, RunInfo};

use crate::graph::Activations;

/// Run condition: the activations carry a profile.
pub fn profiling(acts: Option<Res<Activations>>) -> bool {
    acts.is_some_and(|a| a.profile.is_some())
}

/// RunEnd: writes `profile.txt` into the run directory and prints the per-kind table.
pub fn write_profile(acts: Res<Activations>, graph: Res<Graph>, info: Res<RunInfo>, mut failure: ResMut<RunFailure>) {
    let Some(profile) = &acts.profile else { return };
    let report = profile.report(&graph);
    let path = info.dir.join("profile.txt");
    if let Err(e) = super::write_atomic(&path, report.as_bytes()) {
        failure.0.get_or_insert(format!("cannot write {}: {e}", path.display()));
        return;
    }
    // The per-kind table ends at its `total` line; the per-node listing stays in the file.
    let head: Vec<&str> = report.lines().take_while(|l| !l.starts_with("Per node")).collect();
    println!("{}\n(per node: {})", head.join("\n").trim_end(), path.display());
}
