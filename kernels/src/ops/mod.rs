//! One module per op: the public forward/backward functions on flat buffers, the CPU kernel and the tests.
//!
//! Conventions shared by every op:
//! - buffers are flat, contiguous and row-major, with the shapes in each function's doc comment;
//! - kernels are generic over [`crate::Float`]: `f32` for training, `f64` as the reference in tests;
//! - gradients of parameters accumulate (`+=`, so micro-batches can accumulate), gradients of activations
//!   and inputs overwrite (`=`);
//! - nothing allocates: the caller passes every buffer (the `gemm` crate may use scratch space internally);
//! - large buffers are split across rayon threads, small ones run on the calling thread.

pub mod activation;
pub mod add;
pub mod attention;
pub mod attention_pool;
mod attention_small;
pub mod batch_norm;
pub mod bias_add;
pub mod bmm;
pub mod cast;
pub mod concat;
pub mod conv2d;
pub mod cosine_loss;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod gemm;
pub mod interpolate;
pub mod l1_loss;
pub mod layer_norm;
pub mod linear;
pub mod linear_act;
pub mod linear_lead;
pub mod linear_residual;
pub mod mse;
pub mod patch_stem;
pub mod permute;
pub mod pool;
pub mod relu;
pub mod sigmoid;
pub mod silu;
pub mod softmax;
pub mod softmax_cross_entropy;
pub mod tanh;
pub mod token_mean;
pub mod token_stem;
pub mod upsample;
pub mod vector_quantize;

pub(crate) mod par;

#[cfg(test)]
pub(crate) mod cuda_test_util;

#[cfg(test)]
pub(crate) mod gradcheck;

pub use bias_add::{bias_add_backward, bias_add_forward};
pub use dropout::{dropout_backward, dropout_forward, dropout_keep};
pub use gelu::{gelu_backward, gelu_forward, GeluApprox};
pub use linear::{linear_backward, linear_forward, matmul};
pub use mse::{mse_backward, mse_forward};
pub use par::fill as par_fill;
pub use relu::{relu_backward, relu_forward};
pub use sigmoid::{sigmoid_backward, sigmoid_forward};
pub use softmax_cross_entropy::{
    softmax_cross_entropy_backward, softmax_cross_entropy_forward, top_k_correct, CrossEntropyError,
    CrossEntropyOptions,
};
pub use tanh::{tanh_backward, tanh_forward};
