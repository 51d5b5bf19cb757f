//! Whole-graph checks of the executor's wiring: gradients of a small conv net through `forward` / `backward`
//! against central finite differences of the same forward pass (f32, so tolerances are loose; each op's own
//! float64 checks live in its kernel module).

use bevy_ecs::world::World;
use ecstrain_components::{Activation, Conv2dSpec, Grads, Mode, Params, Pool2dSpec};
use ecstrain_kernels::rng::Rng;

use super::{backward, forward, Activations, GraphBuilder};

fn tiny_net(world: &mut World, max_pool: bool) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[2 * 6 * 6]);
    let x = g.input();
    let x = g.reshape("input", x, &[2, 6, 6]).unwrap();
    let spec = Conv2dSpec {
        in_channels: 2,
        out_channels: 3,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
        groups: 1,
    };
    let x = g.conv2d("conv", x, spec, true).unwrap();
    let x = g.activation("act", x, Activation::Tanh);
    let p = Pool2dSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
    let x = if max_pool { g.max_pool2d("pool", x, p).unwrap() } else { g.avg_pool2d("pool", x, p).unwrap() };
    let x = g.flatten("flatten", x);
    let out = g.linear("fc", x, 4, true).unwrap();
    g.finish(world, out, 7)
}

/// L = sum(w * output) for fixed random weights w.
fn loss(
    graph: &ecstrain_components::Graph,
    params: &[f32],
    acts: &mut Activations,
    x: &[f32],
    n: usize,
    w: &[f32],
) -> f64 {
    forward(graph, params, acts, x, n, Mode::Train, 0);
    acts.output(graph, n).iter().zip(w).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
}

fn check(max_pool: bool) {
    let mut world = World::new();
    let graph = tiny_net(&mut world, max_pool);
    let n = 3;
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..n * 72).map(|_| rng.normal() as f32).collect();
    let w: Vec<f32> = (0..n * 4).map(|_| rng.normal() as f32).collect();
    let mut acts = Activations::plan(&graph, n);
    let mut params = world.resource::<Params>().0.data.clone();
    let mut grads = world.resource::<Grads>().0.data.clone();

    forward(&graph, &params, &mut acts, &x, n, Mode::Train, 0);
    let out = graph.output.0;
    acts.grads[out][..n * 4].copy_from_slice(&w);
    backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);

    // Small steps keep max-pool windows from switching their argmax under the perturbation.
    let h = if max_pool { 2e-3f32 } else { 1e-2 };
    let mut worst = 0.0f64;
    for k in (0..params.len()).step_by(7) {
        let orig = params[k];
        params[k] = orig + h;
        let lp = loss(&graph, &params, &mut acts, &x, n, &w);
        params[k] = orig - h;
        let lm = loss(&graph, &params, &mut acts, &x, n, &w);
        params[k] = orig;
        let numeric = (lp - lm) / (2.0 * h as f64);
        let err = (numeric - grads[k] as f64).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 2e-2, "graph gradient mismatch (max_pool {max_pool}): {worst}");
}

#[test]
fn conv_net_gradients_match_finite_differences_avg_pool() {
    check(false);
}

#[test]
fn conv_net_gradients_match_finite_differences_max_pool() {
    check(true);
}
