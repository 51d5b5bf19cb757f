//! Shared test helpers: loading the PyTorch reference trajectories and comparing a run against them.

use serde_json::Value;

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

/// Asserts the f32 run within 1e-6 and the f64 run within 1e-12 of torch at every step, and prints both
/// maxima (visible with `--nocapture`).
pub(crate) fn check_trajectory(name: &str, f32_run: &[Vec<f64>], f64_run: &[Vec<f64>], case: &Case) {
    let e32 = max_abs_diff(f32_run, &case.params_f32);
    let e64 = max_abs_diff(f64_run, &case.params_f64);
    println!("{name}: max |f32 - torch f32| = {e32:.3e}, max |f64 - torch f64| = {e64:.3e}");
    assert!(e32 <= 1e-6, "{name}: f32 run off torch's by {e32:e}");
    assert!(e64 <= 1e-12, "{name}: f64 run off torch's by {e64:e}");
}
