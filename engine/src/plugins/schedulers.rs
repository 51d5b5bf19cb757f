//! Registry entries of the built-in learning-rate schedules.

use ecstrain_systems::schedule::lr::{LrSchedule, LrScheduler, Warmup};

use crate::app::{App, Plugin};
use crate::registry::*;

/// `constant`, `linear`, `cosine`, each after an optional linear warm-up.
pub struct BuiltinSchedulers;

fn with_warmup(ctx: &ScheduleContext, main: impl Fn(u64) -> LrSchedule) -> Result<LrScheduler, String> {
    let r = ctx.run;
    let warm = (r.warmup_epochs * ctx.steps_per_epoch as f64).round() as u64;
    let warm = warm.min(ctx.total_steps);
    let rest = ctx.total_steps - warm;
    Ok(LrScheduler {
        base_lr: r.lr0,
        warmup: (warm > 0).then_some(Warmup { steps: warm, start_factor: r.warmup_start_factor }),
        schedule: main(rest.max(1)),
    })
}

impl Plugin for BuiltinSchedulers {
    fn build(&self, app: &mut App) {
        app.registry.register_scheduler(
            "constant",
            SchedulerEntry {
                build: |c| with_warmup(c, |_| LrSchedule::Constant),
                doc: "lr0 throughout (after warm-up)",
            },
        );
        app.registry.register_scheduler(
            "linear",
            SchedulerEntry {
                build: |c| {
                    let f = c.run.lrf;
                    with_warmup(c, |n| LrSchedule::Linear { total_steps: n, start_factor: 1.0, end_factor: f })
                },
                doc: "linear from lr0 to lr0*lrf over the run (torch LinearLR)",
            },
        );
        app.registry.register_scheduler(
            "cosine",
            SchedulerEntry {
                build: |c| {
                    let f = c.run.lrf;
                    with_warmup(c, |n| LrSchedule::Cosine { total_steps: n, final_factor: f })
                },
                doc: "cosine from lr0 to lr0*lrf over the run (torch CosineAnnealingLR)",
            },
        );
    }
}
