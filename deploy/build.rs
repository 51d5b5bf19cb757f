//! Compiles the vendored ONNX schema (proto/onnx.proto) into prost message types in OUT_DIR. protox parses
//! the .proto in Rust, so building needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto parses");
    prost_build::Config::new().compile_fds(descriptors).expect("prost generates the ONNX messages");
}
