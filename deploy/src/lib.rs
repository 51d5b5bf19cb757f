//! Deployment of trained models: the static graph written as an ONNX model (float, or int8 QDQ after
//! quantization), from the same graph IR, parameter arenas and buffers the trainer uses.

pub mod onnx;
pub mod quant;
