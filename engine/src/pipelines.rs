//! Config -> the split pipelines: a dataset's splits chained with their processors from the registry.

use std::sync::Arc;

use ecstrain_systems::data::processors::split_entry;
use ecstrain_systems::data::{Dataset, Pipeline, Processor};

use crate::config::SplitProcessors;
use crate::registry::{DatasetSplits, Registry};

/// The train pipeline, and the validation and test pipelines of the splits the dataset has.
pub struct SplitPipelines {
    /// Training samples through `processors.train`.
    pub train: Arc<Pipeline>,
    /// Validation samples through `processors.eval`.
    pub val: Option<Arc<Pipeline>>,
    /// Test samples through `processors.eval` (`engine eval / predict --split test`; training never reads them).
    pub test: Option<Arc<Pipeline>>,
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
    // Val and test samples go through the eval processors and must come out as the train samples do.
    let eval_split = |split: &Option<Arc<dyn Dataset>>, name: &str| -> Result<Option<Arc<Pipeline>>, String> {
        let Some(v) = split else { return Ok(None) };
        let p = build_processors(registry, &format!("{ds_key}.processors.eval"), &processors.eval)?;
        let pipe = Pipeline::new(v.clone(), p, seed, 1).map_err(|m| format!("{ds_key}.processors.eval: {m}"))?;
        if pipe.sample_shape() != train.sample_shape() {
            return Err(format!(
                "{ds_key}: processed {name} samples have shape {:?} ({}) but processed train samples have shape {:?} ({}); \
                 the eval processors must produce what the train processors do",
                pipe.sample_shape(),
                pipe.describe(),
                train.sample_shape(),
                train.describe()
            ));
        }
        Ok(Some(Arc::new(pipe)))
    };
    let val = eval_split(&splits.val, "val")?;
    let test = eval_split(&splits.test, "test")?;
    Ok(SplitPipelines { train: Arc::new(train), val, test })
}
