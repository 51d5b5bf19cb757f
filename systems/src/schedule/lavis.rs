//! Salesforce LAVIS's epoch-based schedules (`lavis/common/optims.py`): `linear_warmup_cosine_lr` and
//! `linear_warmup_step_lr`.
//!
//! LAVIS calls `lr_scheduler.step(cur_epoch, cur_step)` before every iteration. In epoch 0 the lr ramps
//! linearly from `warmup_start_lr` and is clamped at `init_lr` once `warmup_steps` iterations have passed (a
//! warm-up longer than epoch 0 is cut off there); from epoch 1 on the lr is a function of the epoch alone,
//! constant inside it. Here an iteration is an optimizer step: `steps_per_epoch` is the number of optimizer
//! steps per epoch, which equals LAVIS's iterations when gradients are not accumulated.

use std::f64::consts::PI;

/// What LAVIS does after epoch 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LavisDecay {
    /// `LinearWarmupCosineLRScheduler`: `(init_lr - min_lr) * 0.5 * (1 + cos(pi * epoch / max_epoch)) + min_lr`,
    /// which starts at epoch 1 and never reaches `min_lr` within the run.
    Cosine,
    /// `LinearWarmupStepLRScheduler`: `max(min_lr, init_lr * decay_rate^epoch)`.
    Step {
        /// Factor per epoch (LAVIS `lr_decay_rate`).
        decay_rate: f64,
    },
}

/// A LAVIS schedule, indexed by optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LavisSchedule {
    /// LAVIS `init_lr`: the peak lr, reached by the warm-up.
    pub init_lr: f64,
    /// LAVIS `min_lr`: the floor of the decay.
    pub min_lr: f64,
    /// LAVIS `warmup_start_lr` (`warmup_lr` in its configs): the lr of step 0.
    pub warmup_start_lr: f64,
    /// LAVIS `warmup_steps`: length of the ramp in steps (inside epoch 0).
    pub warmup_steps: u64,
    /// Optimizer steps per epoch (LAVIS's iterations per epoch).
    pub steps_per_epoch: u64,
    /// LAVIS `max_epoch`: epochs of the run.
    pub max_epoch: u64,
    /// The decay after epoch 0.
    pub decay: LavisDecay,
}

impl LavisSchedule {
    /// The learning rate in effect for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let spe = self.steps_per_epoch.max(1);
        let (epoch, i) = (step / spe, step % spe);
        if epoch == 0 {
            // warmup_lr_schedule, with LAVIS's operation order.
            let ramp = self.warmup_start_lr
                + (self.init_lr - self.warmup_start_lr) * i as f64 / self.warmup_steps.max(1) as f64;
            return self.init_lr.min(ramp);
        }
        match self.decay {
            LavisDecay::Cosine => {
                (self.init_lr - self.min_lr) * 0.5 * (1.0 + (PI * epoch as f64 / self.max_epoch.max(1) as f64).cos())
                    + self.min_lr
            }
            LavisDecay::Step { decay_rate } => self.min_lr.max(self.init_lr * decay_rate.powf(epoch as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_schedule(warmup_steps: u64) -> LavisSchedule {
        LavisSchedule {
            init_lr: 1e-4,
            min_lr: 3e-5,
            warmup_start_lr: 1e-6,
            warmup_steps,
            steps_per_epoch: 4,
            max_epoch: 20,
            decay: LavisDecay::Step { decay_rate: 0.5 },
        }
    }

    #[test]
    fn linear_warmup_step_by_hand() {
        // Epoch 0 (steps 0..3): 1e-6 + 99e-6 * i / 3 -> 1e-6, 34e-6, 67e-6, 1e-4.
        // Epoch e >= 1: max(3e-5, 1e-4 * 0.5^e) -> 5e-5, 3e-5 (floor: 2.5e-5 < 3e-5), 3e-5, ...
        let s = step_schedule(3);
        let want = [1e-6, 34e-6, 67e-6, 1e-4, 5e-5, 5e-5, 5e-5, 5e-5, 3e-5, 3e-5, 3e-5, 3e-5, 3e-5];
        for (t, w) in want.iter().enumerate() {
            let got = s.lr_at(t as u64);
            assert!((got - w).abs() < 1e-18, "step {t}: {got} != {w}");
        }
    }

    #[test]
    fn warmup_is_clamped_and_cut_off_at_the_end_of_epoch_0() {
        // A 2-step warm-up holds init_lr for the rest of epoch 0.
        let short = step_schedule(2);
        assert_eq!(short.lr_at(2), 1e-4);
        assert_eq!(short.lr_at(3), 1e-4);
        // A 100-step warm-up never finishes: epoch 1 starts the decay anyway.
        let long = step_schedule(100);
        assert!(long.lr_at(3) < 1e-5);
        assert_eq!(long.lr_at(4), 5e-5);
        // No decay (rate 1) is init_lr from epoch 1 on, as LAVIS's default.
        let flat = LavisSchedule { decay: LavisDecay::Step { decay_rate: 1.0 }, ..step_schedule(3) };
        assert!((4..80).all(|t| flat.lr_at(t) == 1e-4));
    }

    #[test]
    fn cosine_is_constant_inside_an_epoch() {
        let c = LavisSchedule { decay: LavisDecay::Cosine, max_epoch: 4, ..step_schedule(3) };
        assert!((4..8).all(|t| c.lr_at(t) == c.lr_at(4)));
        // Epoch 2 of 4 is the cosine's midpoint.
        assert!((c.lr_at(8) - (1e-4 + 3e-5) / 2.0).abs() < 1e-18);
        // The epoch after the last (the run's final record) is min_lr.
        assert!((c.lr_at(16) - 3e-5).abs() < 1e-18);
    }
}
