//! `engine data bench`: the train loader of a config, timed alone. The dataset, processors and loader
//! (`run.batch`, `run.drop_last`, `run.seed`, `run.workers`, `run.prefetch`) are built by the same assembly
//! functions training uses; the model, task and optimizer are not built, so nothing but loading is timed.

use std::time::Instant;

use clap::Args;
use ecstrain_components::{Batch, Shard};
use ecstrain_systems::data::Dataset;

use crate::assemble::{build_loaders, check_run_section, dataset_entry, open_splits};
use crate::cli::RunArgs;
use crate::error::{usage, EngineError};

/// Options of `engine data bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The config whose train pipeline and loader are measured (and overrides).
    #[command(flatten)]
    pub run: RunArgs,
    /// Batches to load (default: `--epochs` passes over the train split).
    #[arg(long, value_name = "N", conflicts_with = "epochs")]
    pub batches: Option<u64>,
    /// Passes over the train split, each in its own shuffled order.
    #[arg(long, value_name = "E", default_value_t = 1)]
    pub epochs: u64,
}

/// What one benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Batches loaded.
    pub batches: u64,
    /// Samples in them.
    pub samples: u64,
    /// Wall time from the first request to the last batch, in seconds.
    pub seconds: f64,
    /// Loader threads (0: on the calling thread).
    pub workers: usize,
    /// Prefetch queue length (0 without loader threads).
    pub prefetch: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.seconds.max(1e-9);
        write!(
            f,
            "{} batches, {} samples in {:.3} s: {:.1} samples/s, {:.2} batches/s, {:.3} ms per batch (workers {}, prefetch {})",
            self.batches,
            self.samples,
            self.seconds,
            self.samples as f64 / s,
            self.batches as f64 / s,
            s * 1e3 / self.batches.max(1) as f64,
            self.workers,
            self.prefetch
        )
    }
}

/// Builds the config's train loader and loads `args`' batches through it, as the training loop asks for
/// them (data epoch by data epoch). Bad config or data is a usage error (exit 2).
pub fn measure(args: &BenchArgs) -> Result<BenchReport, EngineError> {
    let (loaded, _) = crate::cli::load_args(&args.run)?;
    let file = loaded.path.display().to_string();
    let err = |m: String| usage(crate::config::load::with_suggestion(format!("{file}: {m}")));
    let cfg = &loaded.config;
    check_run_section(&cfg.run).map_err(err)?;
    let registry = crate::cli::default_app().registry;
    let (_, entry) = dataset_entry(&registry, cfg).map_err(err)?;
    let (splits, _) = open_splits(&registry, cfg, &entry).map_err(err)?;
    let (mut loader, _) = build_loaders(&cfg.run, Shard::default(), &splits, false).map_err(err)?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let total = args.batches.unwrap_or(per_epoch * args.epochs);
    if total == 0 {
        return Err(usage("--batches / --epochs: nothing to load; give at least 1"));
    }
    let len: usize = splits.train.sample_shape().iter().product();
    let mut batch = Batch::with_capacity(loader.batch_size(), len, splits.train.empty_targets(loader.batch_size()));
    let (workers, prefetch) = (loader.workers(), loader.prefetch_depth());
    // On a thread of the compute pool, as training runs: synchronous loading parallelises there.
    crate::runner::in_pool(|| {
        let t0 = Instant::now();
        let mut samples = 0u64;
        for i in 0..total {
            loader
                .fetch(i / per_epoch, (i % per_epoch) as usize, &mut batch)
                .map_err(|m| EngineError::Run(format!("{file}: {m}")))?;
            samples += batch.size as u64;
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(BenchReport { batches: total, samples, seconds, workers, prefetch })
    })
}

/// Runs `engine data bench`: prints one line with the throughput.
pub fn run(args: &BenchArgs) -> Result<(), EngineError> {
    let report = measure(args)?;
    println!("{report}");
    Ok(())
}
