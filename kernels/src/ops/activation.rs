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

/// `act(x)` for one element, the activation chosen at compile time: the expression each module's forward
/// evaluates.
#[inline(always)]
pub(crate) fn forward_elem<T: Float, const ACT: u8>(x: T) -> T {
    match ACT {
        RELU => relu::forward_elem(x),
        GELU => gelu::gelu_exact(x),
        GELU_TANH => gelu::gelu_tanh(x),
        TANH => x.tanh(),
        SIGMOID => sigmoid::sigmoid(x),
        _ => silu::forward_elem(x),
    }
}

/// `act'(x)` for one element: every backward but ReLU's is `dout * act'(x)` (each module's `backward_elem`), so a kernel
/// that keeps this from the forward gives the backward's bits with one multiply. ReLU's backward is a mask
/// (it keeps a NaN gradient out of the inactive units), so for ReLU this is the input itself: callers keep
/// the pre-activation and mask with [`backward_from_kept`].
#[inline(always)]
pub(crate) fn kept_elem<T: Float, const ACT: u8>(x: T) -> T {
    match ACT {
        RELU => x,
        GELU => gelu::gelu_exact_grad(x),
        GELU_TANH => gelu::gelu_tanh_grad(x),
        TANH => tanh::grad_elem(x),
        SIGMOID => sigmoid::grad_elem(x),
        _ => silu::grad_elem(x),
    }
}

/// The backward of one element from what [`kept_elem`] kept: `g * kept` (ReLU: `g` where the kept input is
/// positive, else 0), bitwise the module's `backward_elem(g, x)`.
#[inline(always)]
pub(crate) fn backward_from_kept<T: Float, const ACT: u8>(g: T, kept: T) -> T {
    match ACT {
        RELU => relu::backward_elem(g, kept),
        _ => g * kept,
    }
}

/// The entry points of `activation.cu` (also compiled into the fused linear + activation's program).
pub(crate) const ENTRY_POINTS: [&str; 6] = [
    "activation_forward_f32",
    "activation_backward_f32",
    "activation_forward_f16",
    "activation_backward_f16",
    "activation_forward_bf16",
    "activation_backward_bf16",
];

/// The CUDA kernels of every activation (`activation.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "activation", code: include_str!("activation.cu"), kernels: &ENTRY_POINTS };

/// Host side of `activation.cu`.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{Activation, CUDA};
    use crate::cuda::{Gpu, GpuError, Store};

    /// `y = act(x)` on the GPU. y, x: [n], stored in `T` (math in f32, a half output rounded once).
    pub fn forward<T: Store>(
        gpu: &Gpu,
        act: Activation,
        y: &mut CudaViewMut<T>,
        x: &CudaView<T>,
    ) -> Result<(), GpuError> {
        let n = x.len();
        assert_eq!(y.len(), n, "activation forward: y and x lengths differ");
        let f = gpu.function(
            &CUDA,
            T::pick(["activation_forward_f32", "activation_forward_f16", "activation_forward_bf16"]),
        )?;
        let code = act.code() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(y).arg(x).arg(&n).arg(&code);
        // SAFETY: the argument list matches the kernel signature (T*, const T*, size_t, int) and both buffers
        // hold n elements.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// `dx = dy * act'(x)` on the GPU (overwrites dx). dx, dy, x: [n], stored in `T`.
    pub fn backward<T: Store>(
        gpu: &Gpu,
        act: Activation,
        dx: &mut CudaViewMut<T>,
        dy: &CudaView<T>,
        x: &CudaView<T>,
    ) -> Result<(), GpuError> {
        let n = x.len();
        assert!(dx.len() == n && dy.len() == n, "activation backward: lengths differ");
        let names = ["activation_backward_f32", "activation_backward_f16", "activation_backward_bf16"];
        let f = gpu.function(&CUDA, T::pick(names))?;
        let code = act.code() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(dx).arg(dy).arg(x).arg(&n).arg(&code);
        // SAFETY: as in `forward`, for (T*, const T*, const T*, size_t, int).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::rng::Rng;

        /// Every activation on the GPU against the CPU kernel, forward and backward, on fresh inputs.
        #[test]
        fn activations_match_cpu() {
            let Some(gpu) = gpu_or_skip("activations_match_cpu") else { return };
            let mut rng = Rng::new(test_seed("activations_match_cpu"));
            let n = 100_003; // not a multiple of the block
            let x: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 8.0 - 4.0).collect();
            let g: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
            let (dx_dev, dg_dev) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
            for &name in Activation::NAMES {
                let act = Activation::parse(name).unwrap();
                let (mut want_y, mut want_dx) = (vec![0.0; n], vec![0.0; n]);
                super::super::activation_forward(act, &mut want_y, &x);
                super::super::activation_backward(act, &mut want_dx, &g, &x);
                let mut y = poisoned(gpu, n).unwrap();
                forward(gpu, act, &mut y.as_view_mut(), &dx_dev.as_view()).unwrap();
                assert_close(&format!("{name} forward"), &gpu.download(&y).unwrap(), &want_y, 1e-6, 1e-5);
                let mut dx = poisoned(gpu, n).unwrap();
                backward(gpu, act, &mut dx.as_view_mut(), &dg_dev.as_view(), &dx_dev.as_view()).unwrap();
                assert_close(&format!("{name} backward"), &gpu.download(&dx).unwrap(), &want_dx, 1e-6, 1e-5);
            }
        }

        /// Half storage: the CPU activation (forward, backward) of the stored inputs, rounded once into the
        /// storage type; CUDA's libm and the CPU's differ by ~1e-6 relative, which may move a value across
        /// a rounding boundary, so the tolerance is one unit in the last place of the type.
        fn half_case<T: crate::ops::cuda_test_util::TestStore>(gpu: &Gpu, rng: &mut Rng) {
            use crate::ops::cuda_test_util::{download_f32, poisoned_as, upload_as};
            let n = 20_011;
            let (dx_dev, x) =
                upload_as::<T>(gpu, &(0..n).map(|_| rng.next_f64() as f32 * 8.0 - 4.0).collect::<Vec<_>>());
            let (dg_dev, g) =
                upload_as::<T>(gpu, &(0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect::<Vec<_>>());
            // One unit in the last place relative to the value: 2^-10 (f16), 2^-7 (bf16).
            let ulp = if T::KIND == crate::cuda::StoreKind::F16 { 1.0 / 1024.0 } else { 1.0 / 128.0 };
            for &name in Activation::NAMES {
                let act = Activation::parse(name).unwrap();
                let (mut want_y, mut want_dx) = (vec![0.0; n], vec![0.0; n]);
                super::super::activation_forward(act, &mut want_y, &x);
                super::super::activation_backward(act, &mut want_dx, &g, &x);
                want_y.iter_mut().chain(want_dx.iter_mut()).for_each(|v| *v = T::round(*v));
                let mut y = poisoned_as::<T>(gpu, n);
                forward(gpu, act, &mut y.as_view_mut(), &dx_dev.as_view()).unwrap();
                let what = format!("{name} forward {}", T::KIND.name());
                assert_close(&what, &download_f32(gpu, &y), &want_y, 1e-6, ulp);
                let mut dx = poisoned_as::<T>(gpu, n);
                backward(gpu, act, &mut dx.as_view_mut(), &dg_dev.as_view(), &dx_dev.as_view()).unwrap();
                let what = format!("{name} backward {}", T::KIND.name());
                assert_close(&what, &download_f32(gpu, &dx), &want_dx, 1e-6, ulp);
            }
        }

        #[test]
        fn activations_in_half_storage_match_the_rounded_cpu() {
            let Some(gpu) = gpu_or_skip("activations_in_half_storage_match_the_rounded_cpu") else { return };
            let mut rng = Rng::new(test_seed("activations_in_half_storage_match_the_rounded_cpu"));
            half_case::<half::f16>(gpu, &mut rng);
            half_case::<half::bf16>(gpu, &mut rng);
        }
    }
}
