//! Config -> the split pipelines: a dataset's splits chained with their processors from the registry.

use std::sync::Arc;

use ecstrain_systems::data::processors::split_entry;
use ecstrain_systems::data::{Dataset, Pipeline, Processor};

use crate::config::SplitProcessors;
use crate::registry::{DatasetSplits, Registry};

/// The train pipeline and the validation pipeline, if the dataset has a val split.
pub struct SplitPipelines {
    /// Training samples through `processors.train`.
    pub train: Arc<Pipeline>,
    /// Validation samples through `processors.eval`.
    pub val: Option<Arc<Pipeline>>,
}

/// Builds the processors of one list; `key` is its config path (`datasets.d.processors.train`).
pub fn build_processors(
    registry: &Registry,
    key: &str,
    entries: &[serde_json::Value],
) -> Result<Vec<Box<dyn Processor>>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let at = format!("{key}[{i}]");
            let (name, options) = split_entry(entry).map_err(|m| format!("{at}: {m}"))?;
            let e = registry.processor(&at, &name)?;
            (e.build)(&options).map_err(|m| format!("{at} ({name}): {m}"))
        })
        .collect()
}

/// Chains each split with its processors. `ds_key` is `datasets.<name>`; the train split's augmentations
/// are keyed by stream 0 and the val split's by stream 1.
pub fn build_pipelines(
    registry: &Registry,
    ds_key: &str,
    splits: &DatasetSplits,
    processors: &SplitProcessors,
    seed: u64,
) -> Result<SplitPipelines, String> {
    let train_p = build_processors(registry, &format!("{ds_key}.processors.train"), &processors.train)?;
    let train =
        Pipeline::new(splits.train.clone(), train_p, seed, 0).map_err(|m| format!("{ds_key}.processors.train: {m}"))?;
    let val = match &splits.val {
        None => None,
        Some(v) => {
            let p = build_processors(registry, &format!("{ds_key}.processors.eval"), &processors.eval)?;
            let pipe = Pipeline::new(v.clone(), p, seed, 1).map_err(|m| format!("{ds_key}.processors.eval: {m}"))?;
            if pipe.sample_shape() != train.sample_shape() {
                return Err(format!(
                    "{ds_key}: processed val samples have shape {:?} ({}) but processed train samples have shape {:?} ({}); \
                     the eval processors must produce what the train processors do",
                    pipe.sample_shape(),
                    pipe.describe(),
                    train.sample_shape(),
                    train.describe()
                ));
            }
            Some(Arc::new(pipe))
        }
    };
    Ok(SplitPipelines { train: Arc::new(train), val })
}
