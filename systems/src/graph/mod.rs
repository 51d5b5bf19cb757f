//! Building the model graph and executing it: [`builder`] turns a model description into a
//! [`Graph`](ecstrain_components::Graph) plus parameter entities and arenas; [`fuse`] merges node pairs into fused kernels; [`exec`] runs it forward and
//! backward on planned buffers; [`init`] holds PyTorch's default initialisations.

pub mod builder;
pub mod exec;
pub mod fuse;
pub mod init;
pub mod profile;
pub mod qat;
pub mod systems;
#[cfg(test)]
mod tests;

pub use builder::{Footprint, GraphBuilder, GraphError};
pub use exec::{
    add_gradient_shares, attention_pools, backward, backward_releasing, forward, forward_with, gradient_cuts,
    gradient_needed, linear_lead_columns, linear_residual_pairs, patch_stems, residual_norms, select_after_norm,
    token_stems, Activations, NodeOverride, Release, TokenStem,
};
pub use fuse::fuse_linear_activation;
pub use init::Init;
pub use profile::OpProfile;
pub use qat::insert_fake_quant;
