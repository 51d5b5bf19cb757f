//! Tasks: what the model output means. A task owns the loss (the Loss stage writes the output gradient) and
//! the validation metrics; the engine registers each by name.

pub mod classification;
pub mod embedding;
pub mod outputs;
pub mod reconstruction;
pub mod regression;
