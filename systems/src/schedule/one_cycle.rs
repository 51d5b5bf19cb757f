//! torch `OneCycleLR` (two phases, cosine annealing, momentum cycled) in closed form.
//!
//! The lr rises from `max_lr / div_factor` to `max_lr` over the first `pct_start` of the run, then falls to
//! `max_lr / div_factor / final_div_factor`; momentum (SGD) or beta1 (Adam) moves the opposite way, from
//! `max_momentum` down to `base_momentum` and back. The arithmetic follows torch's `get_lr` operation by
//! operation (phase ends as floats, `end + (start - end) / 2 * (cos(pi * pct) + 1)`), so the values agree
//! with torch's to the last bit.

use std::f64::consts::PI;

use super::StepValues;

/// torch `OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy = "cos", cycle_momentum = True,
/// base_momentum, max_momentum, div_factor, final_div_factor, three_phase = False)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    /// Peak learning rate, reached at the end of the first phase.
    pub max_lr: f64,
    /// Optimizer steps of the whole cycle; later steps hold the final value (torch raises instead).
    pub total_steps: u64,
    /// Fraction of `total_steps` spent rising, in (0, 1).
    pub pct_start: f64,
    /// Initial lr = `max_lr / div_factor`.
    pub div_factor: f64,
    /// Final lr = initial lr / `final_div_factor`.
    pub final_div_factor: f64,
    /// Momentum at the lr peak.
    pub base_momentum: f64,
    /// Momentum at the start and the end.
    pub max_momentum: f64,
}

/// torch's `_annealing_cos`: from `start` (pct 0) to `end` (pct 1) along half a cosine.
fn anneal_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

/// `done / span` clamped to [0, 1]; a phase of zero length counts as finished (torch divides by zero).
fn fraction(done: f64, span: f64) -> f64 {
    if span <= 0.0 {
        1.0
    } else {
        (done / span).clamp(0.0, 1.0)
    }
}

impl OneCycle {
    /// The lr (every group) and momentum in effect for optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> StepValues {
        let initial_lr = self.max_lr / self.div_factor;
        let min_lr = initial_lr / self.final_div_factor;
        // torch: phase 1 ends at float(pct_start * total_steps) - 1, phase 2 at total_steps - 1.
        let end_rise = self.pct_start * self.total_steps as f64 - 1.0;
        let end_fall = self.total_steps as f64 - 1.0;
        let t = step as f64;
        let (lr, momentum) = if t <= end_rise {
            let pct = fraction(t, end_rise);
            (anneal_cos(initial_lr, self.max_lr, pct), anneal_cos(self.max_momentum, self.base_momentum, pct))
        } else {
            let pct = fraction(t - end_rise, end_fall - end_rise);
            (anneal_cos(self.max_lr, min_lr, pct), anneal_cos(self.base_momentum, self.max_momentum, pct))
        };
        StepValues { lr, bias_lr: lr, momentum: Some(momentum) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(total_steps: u64) -> OneCycle {
        OneCycle {
            max_lr: 1.0,
            total_steps,
            pct_start: 0.25,
            div_factor: 10.0,
            final_div_factor: 100.0,
            base_momentum: 0.8,
            max_momentum: 0.9,
        }
    }

    #[test]
    fn rises_peaks_and_falls_with_momentum_opposite() {
        // 20 steps, pct 0.25: the rise ends at step 4, the fall at step 19.
        let c = cycle(20);
        let (a, peak, end) = (c.at(0), c.at(4), c.at(19));
        assert!((a.lr - 0.1).abs() < 1e-15 && a.momentum == Some(0.9));
        assert_eq!(peak.lr, 1.0);
        assert!((peak.momentum.unwrap() - 0.8).abs() < 1e-15);
        assert!((end.lr - 1e-3).abs() < 1e-15 && (end.momentum.unwrap() - 0.9).abs() < 1e-15);
        assert_eq!(a.bias_lr, a.lr);
        // Past the end the final value holds.
        assert_eq!(c.at(20), end);
        assert_eq!(c.at(1000), end);
    }

    #[test]
    fn degenerate_phases_give_finite_values() {
        // pct_start * total_steps = 1: the rise has zero length (torch divides by zero).
        let c = OneCycle { total_steps: 4, ..cycle(4) };
        assert!((0..6).all(|t| c.at(t).lr.is_finite()));
        assert_eq!(c.at(0).lr, 1.0);
        // A single step ends the fall at once.
        assert!((cycle(1).at(0).lr - 1e-3).abs() < 1e-15);
    }
}
