//! Parameter initialisation, matching PyTorch's defaults so a config trains like its PyTorch twin.

use ecstrain_kernels::rng::Rng;

/// How a parameter is filled when the graph is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-bound, bound). PyTorch's `nn.Linear` / `nn.Conv2d` weight default (kaiming_uniform with a = sqrt(5))
    /// is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and so is their bias.
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// N(0, std^2).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
}

impl Init {
    /// PyTorch's default for a layer with this fan-in (weights and biases of Linear and Conv).
    pub fn torch_default(fan_in: usize) -> Init {
        Init::Uniform { bound: 1.0 / (fan_in.max(1) as f64).sqrt() }
    }

    /// Fills `out` from `rng`.
    pub fn fill(self, out: &mut [f32], rng: &mut Rng) {
        match self {
            Init::Uniform { bound } => out.iter_mut().for_each(|v| *v = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32),
            Init::Normal { std } => out.iter_mut().for_each(|v| *v = (rng.normal() * std) as f32),
            Init::Zeros => out.fill(0.0),
            Init::Ones => out.fill(1.0),
        }
    }
}
