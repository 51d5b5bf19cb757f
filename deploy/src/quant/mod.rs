//! Int8 post-training quantization of a trained graph, symmetric with zero point 0 (as TensorRT):
//! [`calibration`] observes the input activation of every matrix-product node (linear, conv2d) on
//! calibration batches and turns it into one scale per tensor by a [`CalibMethod`]; [`int8_model`] quantizes
//! the weights per output channel and runs those nodes with the int8 kernels of `ecstrain_kernels::quant`
//! (exact i32 accumulation, one dequantizing multiply) inside the ordinary forward pass; the same
//! quantization is what the QDQ ONNX export writes.
//!
//! [`CalibMethod`]: ecstrain_kernels::quant::calibrate::CalibMethod

pub mod calibration;
pub mod int8_model;
pub mod systems;

pub use calibration::{qat_ranges, quantizable_nodes, Calibration};
pub use int8_model::Int8Model;
