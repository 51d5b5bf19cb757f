//! Full training steps (load, forward, loss, backward, optimizer, schedule, log plumbing) through the real
//! ECS pipeline, for the workloads of ../shared/bench: W1 (784-512-512-10 MLP, AdamW, batch 128) from
//! configs/bench_w1_mlp.yaml, W2 (the two-conv CNN, SGD Nesterov, batch 128) from configs/bench_w2_cnn.yaml and
//! W3 (the 4-block ViT, AdamW, batch 64) from configs/bench_w3_vit.yaml.
//! `benches/side_by_side.sh` runs them next to the PyTorch baseline.

use criterion::{criterion_group, criterion_main, Criterion};
use ecstrain::engine::{
    assemble::assemble,
    cli::default_app,
    config::load_config,
    runner::{in_pool, train_step},
    App,
};

fn app(config: &str, overrides: &[String]) -> App {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let loaded = load_config(&root.join(config), overrides).unwrap();
    let threads = loaded.config.run.threads.unwrap_or(2);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let mut app = assemble(default_app(), loaded, true).unwrap().app;
    // The JSONL logger writes into a run directory; the benchmark gives it a sink instead.
    let sink = std::fs::File::create(if cfg!(unix) { "/dev/null" } else { "NUL" }).unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    for _ in 0..20 {
        train_step(&mut app);
    }
    app
}

fn bench(c: &mut Criterion, group: &str, config: &str, batch: usize) {
    bench_variant(c, group, config, &format!("train_step_b{batch}"), &[]);
}

/// One benchmark of `config` with `overrides` applied, named `group/name`.
fn bench_variant(c: &mut Criterion, group: &str, config: &str, name: &str, overrides: &[String]) {
    let mut app = app(config, overrides);
    let mut g = c.benchmark_group(group);
    g.sample_size(30);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            // As `engine` runs its epochs: inside the pool (see `runner::in_pool`).
            in_pool(|| {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    train_step(&mut app);
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

fn w1(c: &mut Criterion) {
    bench(c, "w1_mlp", "configs/bench_w1_mlp.yaml", 128);
}

/// W1 and W3 with linear + activation pairs run as separate ops (`model.fuse: false`), measured in the same
/// run as the default (fused) steps.
fn unfused(c: &mut Criterion) {
    let off = ["model.fuse=false".to_string()];
    bench_variant(c, "unfused", "configs/bench_w1_mlp.yaml", "w1_mlp_b128", &off);
    bench_variant(c, "unfused", "configs/bench_w3_vit.yaml", "w3_vit_b64", &off);
}

fn w2(c: &mut Criterion) {
    bench(c, "w2_cnn", "configs/bench_w2_cnn.yaml", 128);
}

fn w3(c: &mut Criterion) {
    bench(c, "w3_vit", "configs/bench_w3_vit.yaml", 64);
}

criterion_group!(benches, w1, w2, w3, unfused);
criterion_main!(benches);
