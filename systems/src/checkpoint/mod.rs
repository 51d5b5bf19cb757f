//! Checkpoints: the safetensors file format ([`safetensors_io`]) and the systems that save the run's state
//! ([`save`]): parameters under their dotted names, optimizer state arenas, the clock and the resolved config.

pub mod safetensors_io;
pub mod save;

pub use save::{
    decode_meters, decode_scalars, encode_meters, encode_scalars, run_loop, save_best, save_last, save_periodic,
    save_resume_point, write_checkpoint, CHECKPOINT_FORMAT, MID_EPOCH_KEY, OPTIMIZER_SCALARS_KEY, RUN_LOOP_KEY,
    TRAIN_METERS_KEY,
};
