//! Post-training int8 quantization and quantization-aware training: the numeric core.
//!
//! Everything is symmetric int8 with zero point 0 (TensorRT / pytorch-quantization style): activations get
//! one scale per tensor (`amax / 127`, `amax` from a [`calibrate::Calibrator`]), weights one scale per
//! output channel. The inference kernels quantize their f32 input, multiply exactly in i32
//! ([`gemm_i8`]), and dequantize with `x_scale * w_scale[o]` plus the f32 bias:
//! - [`qparams`]: scales, quantize / dequantize (ONNX `QuantizeLinear` rounding);
//! - [`calibrate`]: streaming |x| histograms and the `max` / `percentile` / `entropy` / `mse` range choices;
//! - [`gemm_i8`]: the exact int8 product with pre-packed weights;
//! - [`linear_i8`], [`conv2d_i8`]: quantized layer forwards;
//! - [`fake_quant`]: fake quantization and its straight-through gradient for QAT.

pub mod calibrate;
pub mod conv2d_i8;
pub mod fake_quant;
pub mod gemm_i8;
pub mod linear_i8;
pub mod qparams;
