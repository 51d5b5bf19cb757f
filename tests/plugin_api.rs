//! Extending the engine from outside, through the same public API the built-in features use: a plugin that
//! freezes the first layer (a component on parameter entities), a plugin that adds a logger system (reading
//! the metric messages), and a registered model used by name from YAML.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Frozen, MetricEvent, ParamInfo};
use ecstrain::engine::registry::ModelEntry;
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App};
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain::systems::sets::{Flush, RunStart};

/// Freezes every parameter whose name starts with `layers.0.` when the run starts.
fn freeze_first_layer(mut commands: Commands, params: Query<(Entity, &ParamInfo)>) {
    for (e, info) in &params {
        if info.name.starts_with("layers.0.") {
            commands.entity(e).insert(Frozen);
        }
    }
}

static VAL_RECORDS: AtomicUsize = AtomicUsize::new(0);

/// A user logger: counts validation records.
fn count_val_records(mut events: MessageReader<MetricEvent>) {
    for e in events.read() {
        if e.split == "val" {
            VAL_RECORDS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn user_plugins_and_registered_models_work_through_the_public_api() {
    let dir = scratch("plugins");
    let save = dir.join("run");
    let yaml = digits_yaml(&save).replace("arch: mlp", "arch: tiny_mlp");
    let cfg = write_config(&dir, "c.yaml", &yaml);

    let mut app = default_app();
    // A model registered under a new name, built by a user function (here: the mlp builder with a fixed width).
    app.registry.register_model(
        "tiny_mlp",
        ModelEntry {
            build: |opts, shape| {
                let mut o = opts.clone();
                o["hidden_sizes"] = serde_json::json!([16]);
                ecstrain::systems::models::mlp::build(&o, shape)
            },
            presets: &[],
            doc: "an MLP with one hidden layer of 16",
        },
    );
    app.add_plugin(|app: &mut App| {
        app.add_systems(RunStart, freeze_first_layer);
    });
    app.add_plugin(|app: &mut App| {
        app.add_systems(Flush, count_val_records);
    });

    let loaded = load_config(&cfg, &[]).unwrap();
    let asm = assemble(app, loaded, true).unwrap();
    let initial = asm.app.world.resource::<ecstrain::components::Params>().0.data.clone();
    runner::train(asm).unwrap();

    let ck = load_safetensors(&save.join("checkpoints/last.safetensors")).unwrap();
    let w0 = ck.tensors["layers.0.weight"].data.as_f32().unwrap();
    assert_eq!(ck.tensors["layers.0.weight"].shape, vec![16, 64], "the registered model was not used");
    assert_eq!(w0, &initial[..16 * 64], "a Frozen parameter changed");
    let w2 = ck.tensors["layers.2.weight"].data.as_f32().unwrap();
    let off = 16 * 64 + 16;
    assert_ne!(w2, &initial[off..off + 10 * 16], "an unfrozen parameter did not train");
    assert_eq!(VAL_RECORDS.load(Ordering::SeqCst), 2, "the user logger should see one val record per epoch");
}
