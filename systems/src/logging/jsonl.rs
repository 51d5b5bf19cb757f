//! `metrics.jsonl`: one JSON object per [`MetricEvent`]: `{"split", "step", "epoch", <metric>: value, ...}`.

use std::fs::File;
use std::io::{BufWriter, Write};

use bevy_ecs::prelude::*;
use ecstrain_components::{MetricEvent, RunFailure};

/// The open metrics file.
#[derive(Resource)]
pub struct JsonlLog(pub BufWriter<File>);

/// Formats one record (non-finite values become `null`, as JSON has no NaN).
pub fn record_json(e: &MetricEvent) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("split".into(), e.split.clone().into());
    obj.insert("step".into(), e.step.into());
    obj.insert("epoch".into(), (e.epoch + 1).into());
    for (k, v) in &e.values {
        obj.insert(k.clone(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into));
    }
    serde_json::Value::Object(obj).to_string()
}

/// Flush: appends every new record and flushes, so the file is readable while the run goes on.
pub fn write_jsonl(mut events: MessageReader<MetricEvent>, mut log: ResMut<JsonlLog>, mut failure: ResMut<RunFailure>) {
    let mut wrote = false;
    for e in events.read() {
        if let Err(err) = writeln!(log.0, "{}", record_json(e)) {
            failure.0.get_or_insert(format!("cannot write metrics.jsonl: {err}"));
        }
        wrote = true;
    }
    if wrote {
        if let Err(err) = log.0.flush() {
            failure.0.get_or_insert(format!("cannot write metrics.jsonl: {err}"));
        }
    }
}
