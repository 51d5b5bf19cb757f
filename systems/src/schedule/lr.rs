//! Learning-rate schedules equivalent to the `torch.optim.lr_scheduler` classes, in closed form.
//!
//! A schedule gives a multiplicative factor of the base learning rate for each 0-based optimizer step `t`,
//! i.e. the lr torch's optimizer holds at step `t` in the loop `optimizer.step(); scheduler.step()`. torch
//! computes the same values recursively; the two agree to rounding (~1e-17 for a base lr of 0.1).

use std::f64::consts::PI;

/// The main schedule, run after the optional warm-up, as a function of the steps since the warm-up ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base lr throughout.
    Constant,
    /// torch `ConstantLR(factor, total_iters = total_steps)`: `factor` for the first `total_steps` steps, then 1.
    ConstantFactor {
        /// The factor applied before `total_steps`.
        factor: f64,
        /// Number of steps the factor is applied for.
        total_steps: u64,
    },
    /// torch `CosineAnnealingLR(T_max = total_steps, eta_min = base_lr * final_factor)`: half a cosine from 1
    /// down to `final_factor` over `total_steps`, then held at `final_factor` (torch would climb back up).
    Cosine {
        /// Length of the decay (torch `T_max`).
        total_steps: u64,
        /// Factor reached at `total_steps` (torch `eta_min / base_lr`).
        final_factor: f64,
    },
    /// torch `LinearLR(start_factor, end_factor, total_iters = total_steps)`: linear from `start_factor` to
    /// `end_factor` over `total_steps`, then held at `end_factor`.
    Linear {
        /// Length of the ramp.
        total_steps: u64,
        /// Factor at step 0.
        start_factor: f64,
        /// Factor from `total_steps` on.
        end_factor: f64,
    },
    /// torch `ExponentialLR(gamma)`: `gamma^t`.
    Exponential {
        /// Decay per step.
        gamma: f64,
    },
    /// torch `PolynomialLR(total_iters = total_steps, power)`: `(1 - min(t, total_steps) / total_steps)^power`,
    /// reaching 0 at `total_steps`.
    Polynomial {
        /// Length of the decay.
        total_steps: u64,
        /// Exponent of the decay (1 is linear).
        power: f64,
    },
    /// torch `StepLR(step_size, gamma)`: `gamma^(t / step_size)` (integer division), i.e. multiplied by `gamma`
    /// every `step_size` steps. A `step_size` of 0 is treated as 1.
    Step {
        /// Steps between two decays.
        step_size: u64,
        /// Decay applied every `step_size` steps.
        gamma: f64,
    },
}

/// A linear warm-up before the main schedule: torch `LinearLR(start_factor, 1.0, total_iters = steps)`
/// chained with `SequentialLR(milestones = [steps])`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// Number of warm-up steps; the main schedule starts (at its own step 0) at step `steps`.
    pub steps: u64,
    /// Factor at step 0; it rises linearly towards 1 (reached at step `steps`, where the main schedule takes
    /// over).
    pub start_factor: f64,
}

/// A complete learning-rate schedule: base lr, optional warm-up, main schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrScheduler {
    /// The optimizer's configured lr (torch `initial_lr`), which the factors multiply.
    pub base_lr: f64,
    /// Optional warm-up preceding `schedule`.
    pub warmup: Option<Warmup>,
    /// The main schedule, run on the steps after the warm-up.
    pub schedule: LrSchedule,
}

/// `min(t, total) / total` as f64, with a zero-length schedule counting as finished.
fn progress(t: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        t.min(total) as f64 / total as f64
    }
}

impl LrSchedule {
    /// The factor of the base lr at step `t` of this schedule (0-based, counted from its own start).
    pub fn factor_at(&self, t: u64) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::ConstantFactor { factor, total_steps } => {
                if t < total_steps {
                    factor
                } else {
                    1.0
                }
            }
            LrSchedule::Cosine { total_steps, final_factor } => {
                let cos = (PI * progress(t, total_steps)).cos();
                final_factor + (1.0 - final_factor) * (1.0 + cos) / 2.0
            }
            LrSchedule::Linear { total_steps, start_factor, end_factor } => {
                start_factor + (end_factor - start_factor) * progress(t, total_steps)
            }
            // powf (C pow) rather than repeated multiplication: exact to the last ulp, and no drift over
            // long runs as torch's recursive product has.
            LrSchedule::Exponential { gamma } => gamma.powf(t as f64),
            LrSchedule::Polynomial { total_steps, power } => (1.0 - progress(t, total_steps)).powf(power),
            LrSchedule::Step { step_size, gamma } => gamma.powf((t / step_size.max(1)) as f64),
        }
    }
}

impl Warmup {
    /// The warm-up factor at step `t < self.steps`.
    fn factor_at(&self, t: u64) -> f64 {
        self.start_factor + (1.0 - self.start_factor) * progress(t, self.steps)
    }
}

impl LrScheduler {
    /// A scheduler without warm-up.
    pub fn new(base_lr: f64, schedule: LrSchedule) -> Self {
        Self { base_lr, warmup: None, schedule }
    }

    /// The factor of `base_lr` in effect for optimizer step `step` (0-based): the warm-up factor during the
    /// warm-up, then the main schedule's factor at `step - warmup.steps`.
    pub fn factor_at(&self, step: u64) -> f64 {
        match self.warmup {
            Some(w) if step < w.steps => w.factor_at(step),
            Some(w) => self.schedule.factor_at(step - w.steps),
            None => self.schedule.factor_at(step),
        }
    }

    /// The learning rate in effect for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor_at(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn reference() -> Value {
        serde_json::from_str(include_str!("../../../tests/reference/schedulers.json")).unwrap()
    }

    /// Checks `lr_at(t)` for t = 0..99 against torch's `lr` sequence of case `name` and prints the maximum error.
    fn check(name: &str, sched: LrScheduler) {
        let r = reference();
        let case = &r["schedulers"][name];
        assert_eq!(r["base_lr"].as_f64().unwrap(), sched.base_lr);
        let want: Vec<f64> = case["lr"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(want.len(), 100);
        let mut worst = 0.0f64;
        for (t, &w) in want.iter().enumerate() {
            let got = sched.lr_at(t as u64);
            let err = (got - w).abs();
            assert!(err <= 1e-12, "{name}: step {t}: lr {got}, torch {w}");
            worst = worst.max(err);
        }
        println!("{name}: max |lr - torch| = {worst:.3e} ({})", case["torch"].as_str().unwrap());
    }

    #[test]
    fn cosine_annealing_matches_torch() {
        // CosineAnnealingLR(T_max=100, eta_min=0.001) at base 0.1.
        check("cosine_annealing", LrScheduler::new(0.1, LrSchedule::Cosine { total_steps: 100, final_factor: 0.01 }));
    }

    #[test]
    fn linear_matches_torch() {
        // LinearLR(start_factor=1.0, end_factor=0.01, total_iters=100).
        let s = LrSchedule::Linear { total_steps: 100, start_factor: 1.0, end_factor: 0.01 };
        check("linear", LrScheduler::new(0.1, s));
    }

    #[test]
    fn warmup_then_cosine_matches_torch() {
        // SequentialLR([LinearLR(0.01, 1.0, 10), CosineAnnealingLR(T_max=90, eta_min=0.001)], milestones=[10]).
        let sched = LrScheduler {
            base_lr: 0.1,
            warmup: Some(Warmup { steps: 10, start_factor: 0.01 }),
            schedule: LrSchedule::Cosine { total_steps: 90, final_factor: 0.01 },
        };
        check("extra_warmup_then_cosine", sched);
    }

    #[test]
    fn constant_factor_matches_torch() {
        // ConstantLR(factor=0.5, total_iters=10).
        let s = LrSchedule::ConstantFactor { factor: 0.5, total_steps: 10 };
        check("extra_constant", LrScheduler::new(0.1, s));
    }

    #[test]
    fn exponential_matches_torch() {
        check("exponential", LrScheduler::new(0.1, LrSchedule::Exponential { gamma: 0.95 }));
    }

    #[test]
    fn polynomial_matches_torch() {
        check("polynomial", LrScheduler::new(0.1, LrSchedule::Polynomial { total_steps: 100, power: 2.0 }));
    }

    #[test]
    fn step_matches_torch() {
        check("step", LrScheduler::new(0.1, LrSchedule::Step { step_size: 30, gamma: 0.1 }));
    }

    #[test]
    fn constant_is_base_lr() {
        let s = LrScheduler::new(0.1, LrSchedule::Constant);
        assert!((0..1000).all(|t| s.lr_at(t) == 0.1));
    }

    #[test]
    fn schedules_hold_their_end_value() {
        let cos = LrSchedule::Cosine { total_steps: 50, final_factor: 0.1 };
        assert!((cos.factor_at(50) - 0.1).abs() < 1e-15);
        assert_eq!(cos.factor_at(50), cos.factor_at(5000));
        let lin = LrSchedule::Linear { total_steps: 10, start_factor: 1.0, end_factor: 0.25 };
        assert_eq!(lin.factor_at(10), 0.25);
        assert_eq!(lin.factor_at(11), 0.25);
        let poly = LrSchedule::Polynomial { total_steps: 10, power: 1.0 };
        assert_eq!(poly.factor_at(10), 0.0);
        assert_eq!(poly.factor_at(20), 0.0);
    }

    #[test]
    fn warmup_ramps_into_the_main_schedule() {
        let s = LrScheduler {
            base_lr: 1.0,
            warmup: Some(Warmup { steps: 4, start_factor: 0.2 }),
            schedule: LrSchedule::Linear { total_steps: 10, start_factor: 1.0, end_factor: 0.0 },
        };
        let got: Vec<f64> = (0..6).map(|t| s.factor_at(t)).collect();
        let want = [0.2, 0.4, 0.6, 0.8, 1.0, 0.9];
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-15), "{got:?}");
        // A zero-step warm-up is no warm-up.
        let none = LrScheduler { warmup: Some(Warmup { steps: 0, start_factor: 0.0 }), ..s };
        assert_eq!(none.factor_at(0), 1.0);
    }
}
