//! Checkpoints: the safetensors file format ([`safetensors_io`]) and the systems that save the run's state
//! ([`save`]): parameters under their dotted names, optimizer state arenas, the clock and the resolved config.

pub mod safetensors_io;
pub mod save;

pub use save::{
    decode_scalars, encode_scalars, save_best, save_last, save_periodic, write_checkpoint, CHECKPOINT_FORMAT,
    OPTIMIZER_SCALARS_KEY,
};
