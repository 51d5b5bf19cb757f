//! Shared test helpers: loading the PyTorch reference trajectories and comparing a run against them.

use serde_json::Value;

use crate::Float;

/// The parsed `tests/reference/optimizers.json`.
pub(crate) struct Reference {
    /// Parameters before step 1.
    pub initial_params: Vec<f64>,
    /// `grads[t]` is the gradient of step `t + 1`.
    pub grads: Vec<Vec<f64>>,
    optimizers: Value,
}

/// One optimizer case of the reference file.
pub(crate) struct Case {
    /// The torch class path, e.g. `torch.optim.SGD`.
    pub class: String,
    /// torch's full `param_groups[0]`.
    pub hyper_parameters: Value,
    /// Parameters after each step, float32 run (as f64).
    pub params_f32: Vec<Vec<f64>>,
    /// Parameters after each step, float64 run.
    pub params_f64: Vec<Vec<f64>>,
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

impl Reference {
    /// Parses the reference file embedded at compile time.
    pub fn load() -> Self {
        let v: Value = serde_json::from_str(include_str!("../../../tests/reference/optimizers.json")).unwrap();
        Self {
            initial_params: v["initial_params"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
            grads: matrix(&v["grads"]),
            optimizers: v["optimizers"].clone(),
        }
    }

    /// The case called `name`.
    pub fn case(&self, name: &str) -> Case {
        let o = &self.optimizers[name];
        assert!(o.is_object(), "no reference case {name}");
        Case {
            class: o["class"].as_str().unwrap().to_string(),
            hyper_parameters: o["hyper_parameters"].clone(),
            params_f32: matrix(&o["params_f32"]),
            params_f64: matrix(&o["params_f64"]),
        }
    }

    /// Names of every case in the file.
    pub fn all_names(&self) -> Vec<String> {
        self.optimizers.as_object().unwrap().keys().cloned().collect()
    }

    /// `final_state_f64.<key>` of the case `name` (torch's optimizer state after step 50).
    pub fn final_state(&self, name: &str, key: &str) -> Value {
        self.optimizers[name]["final_state_f64"][key].clone()
    }

    /// Names of all cases of the torch class `class`.
    pub fn names_of_class(&self, class: &str) -> Vec<String> {
        self.optimizers
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, o)| o["class"] == class)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Largest absolute elementwise difference between two trajectories of equal shape.
fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "trajectory lengths differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// Asserts the f32 run within 1e-6 and the f64 run within 1e-12 of torch at every step, prints both
/// maxima (visible with `--nocapture`) and returns them.
pub(crate) fn check_trajectory(name: &str, f32_run: &[Vec<f64>], f64_run: &[Vec<f64>], case: &Case) -> (f64, f64) {
    let e32 = max_abs_diff(f32_run, &case.params_f32);
    let e64 = max_abs_diff(f64_run, &case.params_f64);
    println!("{name}: max |f32 - torch f32| = {e32:.3e}, max |f64 - torch f64| = {e64:.3e}");
    assert!(e32 <= 1e-6, "{name}: f32 run off torch's by {e32:e}");
    assert!(e64 <= 1e-12, "{name}: f64 run off torch's by {e64:e}");
    (e32, e64)
}

/// A kernel driven through a whole reference case: `(hyper_parameters, initial_params, grads)` -> the
/// parameters after each step.
pub(crate) type Runner = fn(&Value, &[f64], &[Vec<f64>]) -> Vec<Vec<f64>>;

/// The f32 and f64 runners of the kernel that implements the torch class `class`.
fn runners(class: &str) -> (Runner, Runner) {
    use super::*;
    match class {
        "torch.optim.SGD" => (sgd::tests::run_case::<f32>, sgd::tests::run_case::<f64>),
        "torch.optim.Adam" | "torch.optim.AdamW" => (adam::tests::run_case::<f32>, adam::tests::run_case::<f64>),
        "torch.optim.Adamax" => (adamax::tests::run_case::<f32>, adamax::tests::run_case::<f64>),
        "torch.optim.NAdam" => (nadam::tests::run_case::<f32>, nadam::tests::run_case::<f64>),
        "torch.optim.RAdam" => (radam::tests::run_case::<f32>, radam::tests::run_case::<f64>),
        "torch.optim.RMSprop" => (rmsprop::tests::run_case::<f32>, rmsprop::tests::run_case::<f64>),
        "torch.optim.Adagrad" => (adagrad::tests::run_case::<f32>, adagrad::tests::run_case::<f64>),
        "torch.optim.Adadelta" => (adadelta::tests::run_case::<f32>, adadelta::tests::run_case::<f64>),
        other => panic!("no kernel implements {other}"),
    }
}

/// Runs the reference case `name` through its kernel in f32 and f64 and checks both trajectories
/// ([`check_trajectory`]); returns the two maxima.
pub(crate) fn check_reference_case(r: &Reference, name: &str) -> (f64, f64) {
    let case = r.case(name);
    assert_eq!(case.hyper_parameters["maximize"], false, "{name}: maximize is not supported");
    let (run32, run64) = runners(&case.class);
    let f32_run = run32(&case.hyper_parameters, &r.initial_params, &r.grads);
    let f64_run = run64(&case.hyper_parameters, &r.initial_params, &r.grads);
    check_trajectory(name, &f32_run, &f64_run, &case)
}

/// Checks every reference case of the torch class `class` and that there is at least one.
pub(crate) fn check_class(class: &str) {
    let r = Reference::load();
    let names = r.names_of_class(class);
    assert!(!names.is_empty(), "no reference case of {class}");
    for name in names {
        check_reference_case(&r, &name);
    }
}

/// `hp[key]` as f64 (a torch hyper-parameter; panics with its name when missing).
pub(crate) fn hp_f64(hp: &Value, key: &str) -> f64 {
    hp[key].as_f64().unwrap_or_else(|| panic!("hyper_parameters.{key}"))
}

/// `hp[key]` as bool.
pub(crate) fn hp_bool(hp: &Value, key: &str) -> bool {
    hp[key].as_bool().unwrap_or_else(|| panic!("hyper_parameters.{key}"))
}

/// `hp.betas`.
pub(crate) fn hp_betas(hp: &Value) -> (f64, f64) {
    (hp["betas"][0].as_f64().unwrap(), hp["betas"][1].as_f64().unwrap())
}

/// Converts a reference vector to the element type.
pub(crate) fn to_t<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// Widens a parameter vector for comparison.
pub(crate) fn to_f64<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Asserts two buffers equal bit for bit (the parallel-path tests).
pub(crate) fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits());
    assert!(diff.is_none(), "{what}: parallel and sequential paths differ at element {diff:?}");
}

/// A long test slice (several parallel chunks plus a ragged tail) and the piece length the sequential
/// reference is fed in: below the threshold and deliberately not aligned with `PAR_CHUNK`.
pub(crate) fn parallel_sizes() -> (usize, usize) {
    (3 * super::PAR_THRESHOLD + 1234, super::PAR_THRESHOLD / 2 - 7)
}

/// Deterministic test values: `sin(0.37 i + phase)` scaled.
pub(crate) fn wave(n: usize, phase: f32, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.37 + phase).sin() * scale).collect()
}

/// The state buffers of one optimizer step, as handed to a [`check_parallel_matches_sequential`] closure.
pub(crate) type States<'a, 'b> = &'a mut [&'b mut [f32]];

/// Runs `step_fn` for `steps` steps once on long slices (the rayon path) and once on the same data in
/// pieces below the threshold (the sequential path) and asserts the parameters and all `n_states` state
/// buffers (zero before step 1) agree bit for bit.
pub(crate) fn check_parallel_matches_sequential_for(
    what: &str,
    n_states: usize,
    steps: u64,
    step_fn: impl Fn(&mut [f32], &[f32], States, u64),
) {
    let (n, piece) = parallel_sizes();
    assert!(n >= super::PAR_THRESHOLD && piece < super::PAR_THRESHOLD);
    let mut p_par = wave(n, 0.0, 1.0);
    let mut s_par = vec![vec![0.0f32; n]; n_states];
    let (mut p_seq, mut s_seq) = (p_par.clone(), s_par.clone());
    for step in 1..=steps {
        let g = wave(n, 1.3 * step as f32, 0.5);
        let mut refs: Vec<&mut [f32]> = s_par.iter_mut().map(Vec::as_mut_slice).collect();
        step_fn(&mut p_par, &g, &mut refs, step);
        for start in (0..n).step_by(piece) {
            let end = (start + piece).min(n);
            let mut refs: Vec<&mut [f32]> = s_seq.iter_mut().map(|v| &mut v[start..end]).collect();
            step_fn(&mut p_seq[start..end], &g[start..end], &mut refs, step);
        }
    }
    assert_bits_eq(&format!("{what} params"), &p_par, &p_seq);
    for (k, (a, b)) in s_par.iter().zip(&s_seq).enumerate() {
        assert_bits_eq(&format!("{what} state {k}"), a, b);
    }
}

/// [`check_parallel_matches_sequential_for`] over three steps.
pub(crate) fn check_parallel_matches_sequential(
    what: &str,
    n_states: usize,
    step_fn: impl Fn(&mut [f32], &[f32], States, u64),
) {
    check_parallel_matches_sequential_for(what, n_states, 3, step_fn);
}
