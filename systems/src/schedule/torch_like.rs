//! Learning-rate schedules equivalent to the `torch.optim.lr_scheduler` classes, in closed form.
//!
//! A schedule gives a multiplicative factor of the base learning rate for each 0-based optimizer step `t`,
//! i.e. the lr torch's optimizer holds at step `t` in the loop `optimizer.step(); scheduler.step()`. torch
//! computes the same values recursively; the two agree to rounding (~1e-17 for a base lr of 0.1).

use std::f64::consts::PI;

/// The main schedule, run after the optional warm-up, as a function of the steps since the warm-up ended.
#[derive(Debug, Clone, PartialEq)]
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
    /// `gamma^(t / period)`: torch `ExponentialLR(gamma)` for `period` 1; a larger period spreads one factor of
    /// `gamma` smoothly over `period` steps (e.g. one epoch).
    Exponential {
        /// Decay per `period` steps.
        gamma: f64,
        /// Steps over which the lr falls by one factor of `gamma` (0 is treated as 1).
        period: u64,
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
    /// torch `MultiStepLR(milestones, gamma)`: `gamma^(number of milestones <= t)`.
    MultiStep {
        /// Steps at which the lr is multiplied by `gamma`, strictly increasing.
        milestones: Box<[u64]>,
        /// Decay applied at each milestone.
        gamma: f64,
    },
    /// torch `CosineAnnealingWarmRestarts(T_0 = first_cycle, T_mult = mult, eta_min = base_lr * final_factor)`:
    /// cosine cycles of `first_cycle`, `first_cycle * mult`, `first_cycle * mult^2`, ... steps, each restarting
    /// at the base lr.
    CosineRestarts {
        /// Length of the first cycle in steps (torch `T_0`; 0 is treated as 1).
        first_cycle: u64,
        /// Growth of the cycle length after each restart (torch `T_mult`; 0 is treated as 1).
        mult: u64,
        /// Factor a cycle decays towards (torch `eta_min / base_lr`).
        final_factor: f64,
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
#[derive(Debug, Clone, PartialEq)]
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

/// `(t - cycle start, cycle length)` of step `t` in cosine cycles of `first`, `first * mult`, ... steps.
fn restart_cycle(t: u64, first: u64, mult: u64) -> (u64, u64) {
    let first = first.max(1);
    if mult <= 1 {
        // Equal cycles: a division, not a walk over (possibly millions of) cycles.
        return (t % first, first);
    }
    // Cycle lengths grow geometrically, so this walks O(log t) cycles.
    let (mut start, mut len) = (0u64, first);
    while t - start >= len {
        start += len;
        len = len.saturating_mul(mult);
    }
    (t - start, len)
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
            LrSchedule::Exponential { gamma, period } => gamma.powf(t as f64 / period.max(1) as f64),
            LrSchedule::Polynomial { total_steps, power } => (1.0 - progress(t, total_steps)).powf(power),
            LrSchedule::Step { step_size, gamma } => gamma.powf((t / step_size.max(1)) as f64),
            LrSchedule::MultiStep { ref milestones, gamma } => {
                // Milestones are sorted: the count of those <= t is a binary search (torch's bisect_right).
                gamma.powf(milestones.partition_point(|&m| m <= t) as f64)
            }
            LrSchedule::CosineRestarts { first_cycle, mult, final_factor } => {
                let (t_cur, t_i) = restart_cycle(t, first_cycle, mult);
                let cos = (PI * t_cur as f64 / t_i as f64).cos();
                final_factor + (1.0 - final_factor) * (1.0 + cos) / 2.0
            }
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
    fn exponential_period_spreads_one_gamma_over_an_epoch() {
        let e = LrSchedule::Exponential { gamma: 0.5, period: 4 };
        assert_eq!(e.factor_at(0), 1.0);
        assert!((e.factor_at(2) - 0.5f64.sqrt()).abs() < 1e-15);
        assert_eq!(e.factor_at(4), 0.5);
        assert_eq!(e.factor_at(8), 0.25);
    }

    #[test]
    fn multistep_counts_milestones_reached() {
        let m = LrSchedule::MultiStep { milestones: vec![2, 5].into(), gamma: 0.5 };
        let got: Vec<f64> = (0..7).map(|t| m.factor_at(t)).collect();
        assert_eq!(got, [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]);
        let none = LrSchedule::MultiStep { milestones: Box::new([]), gamma: 0.5 };
        assert_eq!(none.factor_at(100), 1.0);
    }

    #[test]
    fn restart_cycles_grow_by_mult() {
        // T_0 = 3, T_mult = 2: cycles [0, 3), [3, 9), [9, 21).
        let starts: Vec<(u64, u64)> = [0, 2, 3, 8, 9, 20, 21].iter().map(|&t| restart_cycle(t, 3, 2)).collect();
        assert_eq!(starts, [(0, 3), (2, 3), (0, 6), (5, 6), (0, 12), (11, 12), (0, 24)]);
        assert_eq!(restart_cycle(1_000_000_007, 10, 1), (7, 10));
        let r = LrSchedule::CosineRestarts { first_cycle: 3, mult: 2, final_factor: 0.0 };
        assert_eq!(r.factor_at(3), 1.0);
        assert!((r.factor_at(6) - 0.5).abs() < 1e-15);
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
