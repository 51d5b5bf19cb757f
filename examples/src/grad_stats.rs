//! A plugin with a component and systems: every parameter entity gets a [`GradNormStat`] component at the
//! start of the run; a system after the backward pass adds each parameter's squared gradient norm into it;
//! at every training log interval a system turns the means into a `grads` record
//! (`grad_norm/<parameter>`), which every logger picks up: metrics.jsonl, the TensorBoard file, the console.

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use ecstrain::components::{Clock, Grads, MetricEvent, ParamInfo, ParamSlice};
use ecstrain::engine::{App, Plugin};
use ecstrain::systems::logging::emit::at_log_interval;
use ecstrain::systems::sets::{RunStart, StepSet, TrainStep};

/// Per parameter: the sum of the L2 norms of its gradients since the last record, and how many.
#[derive(Component, Default, Debug)]
pub struct GradNormStat {
    /// Sum of norms.
    pub sum: f64,
    /// Micro-batches summed.
    pub count: u64,
}

/// RunStart: a statistic on every parameter entity.
fn attach(mut commands: Commands, q: Query<Entity, (With<ParamSlice>, Without<GradNormStat>)>) {
    for e in &q {
        commands.entity(e).insert(GradNormStat::default());
    }
}

/// Reduce (after the backward, before clipping and the optimizer): the norm of each parameter's gradient on
/// accumulation boundaries, when the window's gradient is complete.
fn accumulate(mut q: Query<(&ParamSlice, &mut GradNormStat)>, grads: Res<Grads>, clock: Res<Clock>) {
    if !clock.at_accumulation_boundary() {
        return;
    }
    for (slice, mut stat) in &mut q {
        let norm = grads.0.get(*slice).iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
        stat.sum += norm;
        stat.count += 1;
    }
}

/// Log (at the log interval): one `grads` record of the mean norms, then the statistics start over.
fn emit(mut q: Query<(&ParamInfo, &mut GradNormStat)>, clock: Res<Clock>, mut out: MessageWriter<MetricEvent>) {
    let mut values = BTreeMap::new();
    for (info, mut stat) in &mut q {
        if stat.count > 0 {
            values.insert(format!("grad_norm/{}", info.name), stat.sum / stat.count as f64);
        }
        *stat = GradNormStat::default();
    }
    if !values.is_empty() {
        out.write(MetricEvent { split: "grads".into(), step: clock.step, epoch: clock.epoch, values });
    }
}

/// Installs the component and its systems.
pub struct GradStatsPlugin;

impl Plugin for GradStatsPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(RunStart, attach);
        app.add_systems(TrainStep, accumulate.in_set(StepSet::Reduce));
        app.add_systems(TrainStep, emit.run_if(at_log_interval).in_set(StepSet::Log));
    }
}
