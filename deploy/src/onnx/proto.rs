//! The ONNX IR messages (`ModelProto`, `GraphProto`, `NodeProto`, `TensorProto`, ...), generated at build
//! time by prost from the vendored schema `deploy/proto/onnx.proto`. proto2 `optional` fields are `Option`s.

#![allow(missing_docs, clippy::all, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
