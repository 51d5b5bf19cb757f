//! Checkpoint systems: `checkpoints/last.safetensors` after every epoch, `best.safetensors` when the fitness
//! improves, `epochN.safetensors` every `save_period` epochs.
//!
//! Layout of a checkpoint file: every parameter and buffer (batch-norm statistics; `num_batches_tracked` as
//! I64, as PyTorch stores it) as a tensor under its dotted name (so PyTorch's
//! `load_state_dict` and the pip `safetensors` package read it directly); each optimizer state arena as one
//! flat F32 tensor `optimizer.<state name>` (same layout as the parameters, in entity order); metadata
//! (strings): `format`, `clock` (JSON), `optimizer`, `optimizer_step`, `optimizer_scalars` (only for an
//! optimizer with scalar state such as NAdam's `mu_product`: a JSON object of name -> decimal string, written
//! as Rust's shortest round-trip form so it parses back bit for bit), `lr`, `training_state` (JSON),
//! `param_order` (JSON list of names in arena order) and `config` (the resolved YAML).
//!
//! With `run.ema` the dotted names hold the moving averages (the model that was validated, the one to deploy
//! or fine-tune from), and the training weights go under `train.<name>` with the `ema_updates` count, so a
//! resumed run continues both exactly. With f16 loss scaling the scaler's state is the `loss_scaler` entry.

use std::collections::BTreeMap;
use std::path::Path;

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Arena, Buffers, Clock, EmaWeights, LearningRate, LossScaler, Meter, Metrics, OptimizerState, ParamInfo, ParamSlice,
    Params, RunFailure, RunInfo, RunSettings, TrainingState,
};

use super::safetensors_io::{save_safetensors, CheckpointError, TensorData};

/// Value of the `format` metadata key.
pub const CHECKPOINT_FORMAT: &str = "ecstrain-checkpoint/1";

/// Metadata key of the optimizer's scalar state. Optional: checkpoints of optimizers without scalars (and
/// those written before it existed) do not have it.
pub const OPTIMIZER_SCALARS_KEY: &str = "optimizer_scalars";

/// The `optimizer_scalars` metadata value: `{"name": "<f64 in shortest round-trip decimal>"}`. Strings, not
/// JSON numbers, because serde_json's default number parser is not correctly rounded and the value must
/// come back bit for bit.
pub fn encode_scalars(scalars: &[(String, f64)]) -> String {
    let m: serde_json::Map<String, serde_json::Value> =
        scalars.iter().map(|(n, v)| (n.clone(), serde_json::Value::String(format!("{v:?}")))).collect();
    serde_json::Value::Object(m).to_string()
}

/// Parses an [`encode_scalars`] value back (None when it is not one).
pub fn decode_scalars(text: &str) -> Option<BTreeMap<String, f64>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_object()?.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.parse::<f64>().ok()?))).collect()
}

/// Writes one checkpoint file atomically from the given state.
#[allow(clippy::too_many_arguments)]
pub fn write_checkpoint<'a>(
    path: &Path,
    params_iter: impl Iterator<Item = (&'a ParamInfo, &'a ParamSlice)>,
    params: &Params,
    buffers: Option<&Buffers>,
    ema: Option<&EmaWeights>,
    scaler: Option<&LossScaler>,
    opt: Option<&OptimizerState>,
    clock: &Clock,
    lr: &LearningRate,
    state: &TrainingState,
    config_yaml: &str,
    extra: &[(String, String)],
) -> Result<(), CheckpointError> {
    let mut entries: Vec<(&ParamInfo, &ParamSlice)> = params_iter.collect();
    entries.sort_by_key(|(_, s)| s.offset);
    // The model under its own names, and with EMA the training weights under `train.`: which arena holds
    // which depends on whether the averages are swapped in (during a validation pass) or not.
    let empty = Arena::default();
    let buffer_arena = buffers.map_or(&empty, |b| &b.arena);
    let sets: Vec<(&str, &Arena, &Arena)> = match ema {
        None => vec![("", &params.0, buffer_arena)],
        Some(e) if e.swapped => vec![("", &params.0, buffer_arena), ("train.", &e.params, &e.buffers)],
        Some(e) => vec![("", &e.params, &e.buffers), ("train.", &params.0, buffer_arena)],
    };
    let no_entries = Vec::new();
    let buffer_entries = buffers.map_or(&no_entries, |b| &b.entries);
    // Integer buffers are counters kept as f32 in the arena; PyTorch stores them as int64.
    let ints: Vec<Vec<Vec<i64>>> = sets
        .iter()
        .map(|(_, _, b)| buffer_entries.iter().map(|e| b.get(e.slice).iter().map(|&v| v as i64).collect()).collect())
        .collect();
    let mut tensors: Vec<(String, Vec<usize>, TensorData)> = Vec::new();
    for ((prefix, p, b), ints) in sets.iter().zip(&ints) {
        for (info, slice) in &entries {
            tensors.push((format!("{prefix}{}", info.name), info.shape.clone(), TensorData::F32(p.get(**slice))));
        }
        for (e, ints) in buffer_entries.iter().zip(ints) {
            let data = if e.integer { TensorData::I64(ints) } else { TensorData::F32(b.get(e.slice)) };
            tensors.push((format!("{prefix}{}", e.name), e.shape.clone(), data));
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), CHECKPOINT_FORMAT.to_string());
    if let Some(e) = ema {
        meta.insert("ema_updates".into(), e.updates.to_string());
    }
    if let Some(s) = scaler {
        let state = serde_json::json!({"scale": s.scale, "good_steps": s.good_steps, "skipped": s.skipped});
        meta.insert("loss_scaler".into(), state.to_string());
    }
    if let Some(opt) = opt {
        for (name, arena) in &opt.buffers {
            tensors.push((format!("optimizer.{name}"), vec![arena.len()], TensorData::F32(&arena.data)));
        }
        meta.insert("optimizer".into(), opt.optimizer.clone());
        meta.insert("optimizer_step".into(), opt.step.to_string());
        if !opt.scalars.is_empty() {
            meta.insert(OPTIMIZER_SCALARS_KEY.into(), encode_scalars(&opt.scalars));
        }
    }
    meta.insert("clock".into(), serde_json::to_string(clock).expect("clock serialises"));
    meta.insert("lr".into(), format!("{:e}", lr.lr));
    meta.insert(
        "training_state".into(),
        serde_json::json!({
            "best_fitness": state.best_fitness,
            "best_epoch": state.best_epoch,
            "epochs_without_improvement": state.epochs_without_improvement,
            "best_metrics": state.best_metrics,
        })
        .to_string(),
    );
    let order: Vec<&str> = entries.iter().map(|(i, _)| i.name.as_str()).collect();
    meta.insert("param_order".into(), serde_json::to_string(&order).expect("names serialise"));
    meta.insert("config".into(), config_yaml.to_string());
    meta.extend(extra.iter().cloned());
    save_safetensors(path, &tensors, &meta)
}

/// Everything a checkpoint system reads.
#[derive(bevy_ecs::system::SystemParam)]
pub struct CheckpointSources<'w, 's> {
    query: Query<'w, 's, (&'static ParamInfo, &'static ParamSlice)>,
    params: Res<'w, Params>,
    buffers: Option<Res<'w, Buffers>>,
    ema: Option<Res<'w, EmaWeights>>,
    scaler: Option<Res<'w, LossScaler>>,
    opt: Option<Res<'w, OptimizerState>>,
    clock: Res<'w, Clock>,
    lr: Res<'w, LearningRate>,
    state: Res<'w, TrainingState>,
    info: Res<'w, RunInfo>,
}

impl CheckpointSources<'_, '_> {
    fn save(&self, file: &str, failure: &mut RunFailure) {
        self.save_with(file, &[], failure)
    }

    fn save_with(&self, file: &str, extra: &[(String, String)], failure: &mut RunFailure) {
        let path = self.info.dir.join("checkpoints").join(file);
        let r = write_checkpoint(
            &path,
            self.query.iter(),
            &self.params,
            self.buffers.as_deref(),
            self.ema.as_deref(),
            self.scaler.as_deref(),
            self.opt.as_deref(),
            &self.clock,
            &self.lr,
            &self.state,
            &self.info.resolved_config_yaml,
            extra,
        );
        if let Err(e) = r {
            failure.0.get_or_insert(format!("cannot write checkpoint: {e}"));
        }
    }
}

/// EpochEnd: `last.safetensors`.
pub fn save_last(src: CheckpointSources, mut failure: ResMut<RunFailure>) {
    src.save("last.safetensors", &mut failure);
}

/// Metadata key marking a checkpoint written in the middle of an epoch (a stop by signal or time limit):
/// resuming continues that epoch at the saved batch instead of starting the next one.
pub const MID_EPOCH_KEY: &str = "mid_epoch";

/// Metadata key of the training meters of the unfinished epoch (`{"loss": ["sum", "count"]}`, decimal strings
/// that parse back bit for bit), so the resumed epoch's record is the uninterrupted one's.
pub const TRAIN_METERS_KEY: &str = "train_meters";

/// Metadata key of the loop a mid-epoch checkpoint belongs to (`epochs`, or `iters <max>/<per inner epoch>`).
pub const RUN_LOOP_KEY: &str = "run_loop";

/// The [`RUN_LOOP_KEY`] value of a run.
pub fn run_loop(settings: &RunSettings) -> String {
    match settings.iters {
        Some(it) => format!("iters {}/{}", it.max_iters, it.iters_per_inner_epoch),
        None => "epochs".into(),
    }
}

/// `train_meters` metadata of [`Metrics::train`].
pub fn encode_meters(metrics: &Metrics) -> String {
    let m: serde_json::Map<String, serde_json::Value> = metrics
        .train
        .iter()
        .map(|(k, m)| (k.clone(), serde_json::json!([format!("{:?}", m.sum), format!("{:?}", m.count)])))
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// Parses [`encode_meters`] back (None when it is not one).
pub fn decode_meters(text: &str) -> Option<BTreeMap<String, Meter>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_object()?
        .iter()
        .map(|(k, p)| {
            let num = |i: usize| p.get(i)?.as_str()?.parse::<f64>().ok();
            Some((k.clone(), Meter { sum: num(0)?, count: num(1)? }))
        })
        .collect()
}

/// Run by the runner when a run stops mid-epoch (signal, time limit): `last.safetensors` at this optimizer
/// step, with the epoch's training meters, so `run.resume` continues exactly.
pub fn save_resume_point(
    src: CheckpointSources,
    metrics: Res<Metrics>,
    settings: Res<RunSettings>,
    mut failure: ResMut<RunFailure>,
) {
    let extra = [
        (MID_EPOCH_KEY.to_string(), "true".to_string()),
        (TRAIN_METERS_KEY.to_string(), encode_meters(&metrics)),
        (RUN_LOOP_KEY.to_string(), run_loop(&settings)),
    ];
    src.save_with("last.safetensors", &extra, &mut failure);
}

/// ValidationEnd / Checkpoint: `best.safetensors` when the fitness improved.
pub fn save_best(src: CheckpointSources, mut failure: ResMut<RunFailure>) {
    if src.state.improved {
        src.save("best.safetensors", &mut failure);
    }
}

/// EpochEnd: `epoch<N>.safetensors` every `save_period` epochs (1-based N).
pub fn save_periodic(src: CheckpointSources, settings: Res<RunSettings>, mut failure: ResMut<RunFailure>) {
    let e = src.clock.epoch + 1;
    if settings.save_period > 0 && e.is_multiple_of(settings.save_period) {
        src.save(&format!("epoch{e}.safetensors"), &mut failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip_bit_for_bit() {
        let tiny = 5.630_518e-18_f32 as f64;
        let scalars = vec![("mu_product".to_string(), tiny), ("x".to_string(), 0.1 + 0.2)];
        let back = decode_scalars(&encode_scalars(&scalars)).unwrap();
        for (n, v) in &scalars {
            assert_eq!(back[n].to_bits(), v.to_bits(), "{n}");
        }
        assert!(decode_scalars("{\"a\": 1}").is_none() && decode_scalars("nope").is_none());
    }

    #[test]
    fn meters_round_trip_bit_for_bit() {
        let mut m = Metrics::default();
        m.add_train("loss", 0.1 + 0.2, 3.0);
        m.add_train("loss", 1.0 / 3.0, 7.0);
        assert_eq!(decode_meters(&encode_meters(&m)).unwrap(), m.train);
        assert!(decode_meters("{\"loss\": [1]}").is_none());
    }
}
