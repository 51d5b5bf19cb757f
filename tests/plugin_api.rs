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

/// A user's learning-rate-scale rule: the first layer trains at a tenth of the rate and the last at zero,
/// set as `LrScale` components when the run starts; the optimizer honours them with no engine change.
fn scale_layers(mut commands: Commands, params: Query<(Entity, &ParamInfo)>) {
    for (e, info) in &params {
        if info.name.starts_with("layers.0.") {
            commands.entity(e).insert(ecstrain::components::LrScale(0.1));
        } else if info.name.starts_with("layers.2.") {
            commands.entity(e).insert(ecstrain::components::LrScale(0.0));
        }
    }
}

#[test]
fn a_user_learning_rate_scale_rule_is_a_plugin() {
    let dir = scratch("lr_scale_plugin");
    let run = |tag: &str, with_rule: bool| {
        let save = dir.join(tag);
        let cfg = write_config(&dir, &format!("{tag}.yaml"), &digits_yaml(&save));
        let mut app = default_app();
        if with_rule {
            app.add_plugin(|app: &mut App| {
                app.add_systems(RunStart, scale_layers);
            });
        }
        let asm = assemble(app, load_config(&cfg, &["run.optimizer=SGD".into()]).unwrap(), true).unwrap();
        let initial = asm.app.world.resource::<ecstrain::components::Params>().0.data.clone();
        runner::train(asm).unwrap();
        (initial, load_safetensors(&save.join("checkpoints/last.safetensors")).unwrap())
    };
    let (init, scaled) = run("scaled", true);
    let (_, plain) = run("plain", false);
    let w = |ck: &ecstrain::systems::checkpoint::safetensors_io::LoadedCheckpoint, n: &str| {
        ck.tensors[n].data.as_f32().unwrap().to_vec()
    };
    let moved = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>();
    // layers.2 (scale 0) never moves; layers.0 (scale 0.1) moves about a tenth as far as without the rule.
    let off2 = 32 * 64 + 32;
    assert_eq!(w(&scaled, "layers.2.weight"), init[off2..off2 + 10 * 32].to_vec());
    let (d_scaled, d_plain) = (
        moved(&w(&scaled, "layers.0.weight"), &init[..32 * 64]),
        moved(&w(&plain, "layers.0.weight"), &init[..32 * 64]),
    );
    let ratio = d_scaled / d_plain;
    assert!((0.03..0.3).contains(&ratio), "layer 0 moved {ratio} times as far with scale 0.1");
}
