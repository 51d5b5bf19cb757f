//! The element-wise activations as one enum, with forward / backward dispatch to their modules.
//!
//! The graph stores an [`Activation`] per node; the executor and the fused linear + activation kernel
//! ([`super::linear_act`]) call through here. Each activation's per-element derivative is defined once, in
//! its own module, and used both by that module's backward and by the fused kernel, so the fused and the
//! unfused paths give the same bits.

use crate::Float;

use super::{gelu, relu, sigmoid, silu, tanh};

/// Element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's default).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// x * sigmoid(x) (swish).
    Silu,
}

impl Activation {
    /// Names accepted in configs.
    pub const NAMES: &'static [&'static str] = &["relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu"];

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Activation> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Some(Activation::Relu),
            "gelu" => Some(Activation::Gelu),
            "gelu_tanh" => Some(Activation::GeluTanh),
            "tanh" => Some(Activation::Tanh),
            "sigmoid" => Some(Activation::Sigmoid),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }
}

/// `out = act(inp)` (overwrites `out`).
///
/// inp, out: [N].
pub fn activation_forward<T: Float>(act: Activation, out: &mut [T], inp: &[T]) {
    match act {
        Activation::Relu => relu::relu_forward(out, inp),
        Activation::Gelu => gelu::gelu_forward(out, inp, gelu::GeluApprox::None),
        Activation::GeluTanh => gelu::gelu_forward(out, inp, gelu::GeluApprox::Tanh),
        Activation::Tanh => tanh::tanh_forward(out, inp),
        Activation::Sigmoid => sigmoid::sigmoid_forward(out, inp),
        Activation::Silu => silu::silu_forward(out, inp),
    }
}

/// `dinp = dout * act'(inp)` (overwrites `dinp`; every backward recomputes from the forward input).
///
/// dinp, dout, inp: [N].
pub fn activation_backward<T: Float>(act: Activation, dinp: &mut [T], dout: &[T], inp: &[T]) {
    match act {
        Activation::Relu => relu::relu_backward(dinp, dout, inp),
        Activation::Gelu => gelu::gelu_backward(dinp, dout, inp, gelu::GeluApprox::None),
        Activation::GeluTanh => gelu::gelu_backward(dinp, dout, inp, gelu::GeluApprox::Tanh),
        Activation::Tanh => tanh::tanh_backward(dinp, dout, inp),
        Activation::Sigmoid => sigmoid::sigmoid_backward(dinp, dout, inp),
        Activation::Silu => silu::silu_backward(dinp, dout, inp),
    }
}

/// Activation codes for const-generic kernels (`multiversion!` takes const parameters, not enums).
pub(crate) const RELU: u8 = 0;
pub(crate) const GELU: u8 = 1;
pub(crate) const GELU_TANH: u8 = 2;
pub(crate) const TANH: u8 = 3;
pub(crate) const SIGMOID: u8 = 4;
pub(crate) const SILU: u8 = 5;

impl Activation {
    /// The const-generic code of this activation.
    pub(crate) fn code(self) -> u8 {
        match self {
            Activation::Relu => RELU,
            Activation::Gelu => GELU,
            Activation::GeluTanh => GELU_TANH,
            Activation::Tanh => TANH,
            Activation::Sigmoid => SIGMOID,
            Activation::Silu => SILU,
        }
    }
}

/// `dout * act'(x)` for one element, the activation chosen at compile time: the same expression each
/// module's backward evaluates.
#[inline(always)]
pub(crate) fn backward_elem<T: Float, const ACT: u8>(g: T, x: T) -> T {
    match ACT {
        RELU => relu::backward_elem(g, x),
        GELU => gelu::backward_exact_elem(g, x),
        GELU_TANH => gelu::backward_tanh_elem(g, x),
        TANH => tanh::backward_elem(g, x),
        SIGMOID => sigmoid::backward_elem(g, x),
        _ => silu::backward_elem(g, x),
    }
}
