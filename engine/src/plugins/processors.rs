//! Registry entries of the built-in processors (the per-sample transforms of `datasets.<name>.processors`).

use crate::app::{App, Plugin};

/// The built-in processors.
pub struct BuiltinProcessors;

impl Plugin for BuiltinProcessors {
    fn build(&self, _app: &mut App) {}
}
