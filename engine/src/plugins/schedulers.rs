//! Registry entries of the built-in learning-rate schedules, and the checks of their `run.` keys.
//!
//! Every schedule is indexed by optimizer step. Lengths given in epochs (`warmup_epochs`, `step_size`,
//! `milestones`, `restart_epochs`) are multiplied by the optimizer steps per epoch; LAVIS's `warmup_steps`
//! is in optimizer steps; the Ultralytics iteration `ni` is the optimizer step (the same thing when gradients
//! are not accumulated, i.e. `batch >= nbs`).

use ecstrain_systems::schedule::{
    LavisDecay, LavisSchedule, LrSchedule, LrScheduler, OneCycle, Schedule, Warmup, YoloLambda, YoloSchedule,
    YoloVariant,
};

use crate::app::{App, Plugin};
use crate::config::RunSection;
use crate::registry::*;

/// Every built-in schedule: torch-like (`constant`, `linear`, `cosine`, `exponential`, `polynomial`, `step`,
/// `multistep`, `cosine_restarts`, each after an optional linear warm-up), `one_cycle`, LAVIS
/// (`linear_warmup_cosine`, `linear_warmup_step`) and Ultralytics (`yolo_linear`, `yolo_cos`).
pub struct BuiltinSchedulers;

/// The schedule to look up: `run.scheduler`, turned into its cosine twin by Ultralytics' `run.cos_lr: true`.
pub fn scheduler_name(run: &RunSection) -> Result<String, String> {
    if !run.cos_lr {
        return Ok(run.scheduler.clone());
    }
    match run.scheduler.to_ascii_lowercase().as_str() {
        "linear" | "cosine" => Ok("cosine".into()),
        "yolo_linear" | "yolo_cos" => Ok("yolo_cos".into()),
        other => Err(format!(
            "run.cos_lr: true only selects the cosine form of run.scheduler linear (-> cosine) or yolo_linear \
             (-> yolo_cos), but run.scheduler is `{other}`; set run.cos_lr: false"
        )),
    }
}

/// `Err("<key> must be <range>, got <value>")` unless `ok`.
fn require(ok: bool, key: &str, range: &str, value: impl std::fmt::Display) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("run.{key} must be {range}, got {value}"))
    }
}

/// A finite number > 0.
fn positive(key: &str, v: f64) -> Result<(), String> {
    require(v > 0.0 && v.is_finite(), key, "a positive number", v)
}

/// A momentum / beta1: in [0, 1).
fn momentum(key: &str, v: f64) -> Result<(), String> {
    require((0.0..1.0).contains(&v), key, "in [0, 1)", v)
}

/// Schedules with a warm-up of their own reject the generic one rather than silently ignoring it.
fn no_generic_warmup(run: &RunSection, name: &str, instead: &str) -> Result<(), String> {
    require(
        run.warmup_epochs == 0.0,
        "warmup_epochs",
        &format!("0 with run.scheduler {name} (it has its own warm-up: set {instead})"),
        run.warmup_epochs,
    )
}

/// A torch-like schedule after the optional `warmup_epochs` linear warm-up; `main` gets the steps left.
fn with_warmup(ctx: &ScheduleContext, main: impl FnOnce(u64) -> LrSchedule) -> Result<Schedule, String> {
    let r = ctx.run;
    let warm = (r.warmup_epochs * ctx.steps_per_epoch as f64).round() as u64;
    if warm > ctx.total_steps {
        return Err(format!(
            "run.warmup_epochs ({}) is longer than the run ({} epochs, {} optimizer steps); it must be at most run.epochs",
            r.warmup_epochs, ctx.epochs, ctx.total_steps
        ));
    }
    let rest = ctx.total_steps - warm;
    Ok(Schedule::Torch(LrScheduler {
        base_lr: r.lr0,
        warmup: (warm > 0).then_some(Warmup { steps: warm, start_factor: r.warmup_start_factor }),
        schedule: main(rest.max(1)),
    }))
}

fn exponential(c: &ScheduleContext) -> Result<Schedule, String> {
    positive("gamma", c.run.gamma)?;
    with_warmup(c, |_| LrSchedule::Exponential { gamma: c.run.gamma, period: c.steps_per_epoch })
}

fn polynomial(c: &ScheduleContext) -> Result<Schedule, String> {
    positive("power", c.run.power)?;
    with_warmup(c, |n| LrSchedule::Polynomial { total_steps: n, power: c.run.power })
}

fn step(c: &ScheduleContext) -> Result<Schedule, String> {
    positive("gamma", c.run.gamma)?;
    require(c.run.step_size >= 1, "step_size", "at least 1 (epochs)", c.run.step_size)?;
    let step_size = c.run.step_size.saturating_mul(c.steps_per_epoch);
    with_warmup(c, |_| LrSchedule::Step { step_size, gamma: c.run.gamma })
}

fn multistep(c: &ScheduleContext) -> Result<Schedule, String> {
    positive("gamma", c.run.gamma)?;
    let m = &c.run.milestones;
    require(m.windows(2).all(|w| w[0] < w[1]), "milestones", "strictly increasing epochs", format!("{m:?}"))?;
    let milestones = m.iter().map(|&e| e.saturating_mul(c.steps_per_epoch)).collect();
    with_warmup(c, |_| LrSchedule::MultiStep { milestones, gamma: c.run.gamma })
}

fn cosine_restarts(c: &ScheduleContext) -> Result<Schedule, String> {
    let r = c.run;
    require(r.restart_epochs >= 1, "restart_epochs", "at least 1 (epochs)", r.restart_epochs)?;
    require(r.restart_mult >= 1, "restart_mult", "an integer >= 1", r.restart_mult)?;
    let first_cycle = r.restart_epochs.saturating_mul(c.steps_per_epoch);
    with_warmup(c, |_| LrSchedule::CosineRestarts { first_cycle, mult: r.restart_mult, final_factor: r.lrf })
}

fn one_cycle(c: &ScheduleContext) -> Result<Schedule, String> {
    let r = c.run;
    no_generic_warmup(r, "one_cycle", "run.pct_start")?;
    require(r.pct_start > 0.0 && r.pct_start < 1.0, "pct_start", "in (0, 1)", r.pct_start)?;
    positive("div_factor", r.div_factor)?;
    positive("final_div_factor", r.final_div_factor)?;
    momentum("base_momentum", r.base_momentum)?;
    momentum("max_momentum", r.max_momentum)?;
    require(
        r.base_momentum <= r.max_momentum,
        "base_momentum",
        &format!("<= run.max_momentum ({})", r.max_momentum),
        r.base_momentum,
    )?;
    Ok(Schedule::OneCycle(OneCycle {
        max_lr: r.lr0,
        total_steps: c.total_steps,
        pct_start: r.pct_start,
        div_factor: r.div_factor,
        final_div_factor: r.final_div_factor,
        base_momentum: r.base_momentum,
        max_momentum: r.max_momentum,
    }))
}

fn lavis(c: &ScheduleContext, name: &str, decay: LavisDecay) -> Result<Schedule, String> {
    let r = c.run;
    no_generic_warmup(r, name, "run.warmup_steps and run.warmup_lr")?;
    let lr0_range = format!("in [0, run.lr0 = {}]", r.lr0);
    require((0.0..=r.lr0).contains(&r.min_lr), "min_lr", &lr0_range, r.min_lr)?;
    let warmup_start_lr = r.warmup_lr.unwrap_or(r.lr0);
    require((0.0..=r.lr0).contains(&warmup_start_lr), "warmup_lr", &lr0_range, warmup_start_lr)?;
    if let LavisDecay::Step { decay_rate } = decay {
        require(decay_rate > 0.0 && decay_rate <= 1.0, "lr_decay_rate", "in (0, 1]", decay_rate)?;
    }
    Ok(Schedule::Lavis(LavisSchedule {
        init_lr: r.lr0,
        min_lr: r.min_lr,
        warmup_start_lr,
        warmup_steps: r.warmup_steps,
        steps_per_epoch: c.steps_per_epoch,
        max_epoch: c.epochs,
        decay,
    }))
}

fn yolo(c: &ScheduleContext, lambda: YoloLambda) -> Result<Schedule, String> {
    let r = c.run;
    require(r.warmup_bias_lr >= 0.0 && r.warmup_bias_lr.is_finite(), "warmup_bias_lr", ">= 0", r.warmup_bias_lr)?;
    momentum("warmup_momentum", r.warmup_momentum)?;
    let variant = match r.yolo_variant.to_ascii_lowercase().as_str() {
        "current" => YoloVariant::Current,
        "legacy" => YoloVariant::Legacy,
        other => return Err(format!("run.yolo_variant: unknown variant `{other}`; valid choices: current, legacy")),
    };
    Ok(Schedule::Ultralytics(YoloSchedule {
        lr0: r.lr0,
        lrf: r.lrf,
        epochs: c.epochs,
        steps_per_epoch: c.steps_per_epoch,
        warmup_epochs: r.warmup_epochs,
        warmup_bias_lr: r.warmup_bias_lr,
        warmup_momentum: r.warmup_momentum,
        momentum: r.momentum,
        // Ultralytics ramps `momentum` only in param groups that have one: SGD's, not Adam's.
        ramp_momentum: r.optimizer.eq_ignore_ascii_case("sgd"),
        lambda,
        variant,
    }))
}

impl Plugin for BuiltinSchedulers {
    fn build(&self, app: &mut App) {
        let entries: [(&str, SchedulerEntry); 13] = [
            (
                "constant",
                SchedulerEntry {
                    build: |c| with_warmup(c, |_| LrSchedule::Constant),
                    doc: "lr0 throughout (after warm-up)",
                },
            ),
            (
                "linear",
                SchedulerEntry {
                    build: |c| {
                        with_warmup(c, |n| LrSchedule::Linear { total_steps: n, start_factor: 1.0, end_factor: c.run.lrf })
                    },
                    doc: "linear from lr0 to lr0*lrf over the run (torch LinearLR)",
                },
            ),
            (
                "cosine",
                SchedulerEntry {
                    build: |c| with_warmup(c, |n| LrSchedule::Cosine { total_steps: n, final_factor: c.run.lrf }),
                    doc: "cosine from lr0 to lr0*lrf over the run (torch CosineAnnealingLR)",
                },
            ),
            (
                "exponential",
                SchedulerEntry { build: exponential, doc: "lr0 * gamma^epoch, smooth per step (torch ExponentialLR)" },
            ),
            (
                "polynomial",
                SchedulerEntry { build: polynomial, doc: "lr0 * (1 - t/T)^power down to 0 (torch PolynomialLR)" },
            ),
            ("step", SchedulerEntry { build: step, doc: "times gamma every step_size epochs (torch StepLR)" }),
            (
                "multistep",
                SchedulerEntry { build: multistep, doc: "times gamma at each epoch in milestones (torch MultiStepLR)" },
            ),
            (
                "cosine_restarts",
                SchedulerEntry {
                    build: cosine_restarts,
                    doc: "cosine cycles to lr0*lrf of restart_epochs, growing by restart_mult (torch CosineAnnealingWarmRestarts)",
                },
            ),
            (
                "one_cycle",
                SchedulerEntry {
                    build: one_cycle,
                    doc: "up to lr0 over pct_start then down, momentum cycled (torch OneCycleLR)",
                },
            ),
            (
                "linear_warmup_cosine",
                SchedulerEntry {
                    build: |c| lavis(c, "linear_warmup_cosine", LavisDecay::Cosine),
                    doc: "LAVIS: warmup_steps ramp from warmup_lr in epoch 0, per-epoch cosine to min_lr",
                },
            ),
            (
                "linear_warmup_step",
                SchedulerEntry {
                    build: |c| {
                        lavis(c, "linear_warmup_step", LavisDecay::Step { decay_rate: c.run.lr_decay_rate })
                    },
                    doc: "LAVIS: warmup_steps ramp in epoch 0, then lr0 * lr_decay_rate^epoch, floored at min_lr",
                },
            ),
            (
                "yolo_linear",
                SchedulerEntry {
                    build: |c| yolo(c, YoloLambda::Linear),
                    doc: "Ultralytics: per-epoch linear lr0 -> lr0*lrf, bias/momentum warm-up (yolo_variant)",
                },
            ),
            (
                "yolo_cos",
                SchedulerEntry {
                    build: |c| yolo(c, YoloLambda::Cos),
                    doc: "Ultralytics cos_lr: per-epoch cosine lr0 -> lr0*lrf, bias/momentum warm-up",
                },
            ),
        ];
        for (name, entry) in entries {
            app.registry.register_scheduler(name, entry);
        }
    }
}

#[cfg(test)]
#[path = "schedulers_tests.rs"]
mod tests;
