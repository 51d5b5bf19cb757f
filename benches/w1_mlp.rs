//! W1 of ../shared/bench: one full training step (load, forward, loss, backward, AdamW, schedule, log) of
//! the 784-512-512-10 MLP at batch 128, through the real ECS pipeline assembled from
//! configs/bench_w1_mlp.yaml. `benches/w1_side_by_side.sh` runs it next to the PyTorch baseline.

use criterion::{criterion_group, criterion_main, Criterion};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step};

fn w1(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let loaded = load_config(&root.join("configs/bench_w1_mlp.yaml"), &[]).unwrap();
    let threads = loaded.config.run.threads.unwrap_or(2);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let mut app = assemble(default_app(), loaded, true).unwrap().app;
    // Loggers write into a run directory; the benchmark keeps the JSONL logger quiet by giving it a sink.
    let sink = std::fs::File::create(if cfg!(unix) { "/dev/null" } else { "NUL" }).unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    for _ in 0..20 {
        train_step(&mut app);
    }
    let mut g = c.benchmark_group("w1_mlp");
    g.sample_size(30);
    g.bench_function("train_step_b128", |b| b.iter(|| train_step(&mut app)));
    g.finish();
}

criterion_group!(benches, w1);
criterion_main!(benches);
