//! The model summary printed by `engine check` and at the start of a run: a table of the graph's layers with
//! their output shapes (batch first) and parameter counts, the total and trainable parameters, and the memory
//! the run will hold: parameters, gradients, optimizer state, activations for the configured batch (the
//! graph's planned buffers: forward values, their gradients, state saved for the backward and scratch), the
//! batch buffer and the EMA copy when there is one. Every figure is read from the assembled resources, so it
//! is what the run allocates, not an estimate from a formula.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Buffers, EmaWeights, Frozen, Graph, OptimizerState, ParamSlice, Params};
use ecstrain_systems::graph::Activations;

/// Bytes as MiB with two decimals.
fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// An integer with thousands separators (`1,234,567`), as torchinfo and Keras print counts.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The memory a run holds, in bytes, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The parameter arena.
    pub params: usize,
    /// The gradient arena (the size of the parameters).
    pub grads: usize,
    /// The optimizer's state buffers.
    pub optimizer_state: usize,
    /// Forward values of every graph value for the planned batch.
    pub activation_values: usize,
    /// Their gradients, the state ops save for the backward, and scratch.
    pub activation_other: usize,
    /// Non-trainable model buffers (batch-norm statistics).
    pub buffers: usize,
    /// The batch buffer (inputs).
    pub batch: usize,
    /// The EMA copy of parameters and buffers (`run.ema`).
    pub ema: usize,
}

impl MemoryEstimate {
    /// Reads the sizes from the assembled resources of `world`.
    pub fn of(world: &World) -> MemoryEstimate {
        let params = world.get_resource::<Params>().map_or(0, |p| p.0.len() * 4);
        let optimizer_state =
            world.get_resource::<OptimizerState>().map_or(0, |s| s.buffers.iter().map(|(_, a)| a.len() * 4).sum());
        let (activation_values, activation_all) = world
            .get_resource::<Activations>()
            .map_or((0, 0), |a| (4 * a.values.iter().map(Vec::len).sum::<usize>(), a.bytes()));
        let buffers = world.get_resource::<Buffers>().map_or(0, |b| b.arena.len() * 4);
        let batch = world.get_resource::<Batch>().map_or(0, |b| b.inputs.len() * 4);
        let ema = world.get_resource::<EmaWeights>().map_or(0, |e| (e.params.len() + e.buffers.len()) * 4);
        MemoryEstimate {
            params,
            grads: params,
            optimizer_state,
            activation_values,
            activation_other: activation_all - activation_values,
            buffers,
            batch,
            ema,
        }
    }

    /// Everything together.
    pub fn total(&self) -> usize {
        self.params
            + self.grads
            + self.optimizer_state
            + self.activation_values
            + self.activation_other
            + self.buffers
            + self.batch
            + self.ema
    }
}

/// Renders the summary for `graph` (parameters and memory read from `world`).
pub fn model_summary(world: &mut World, graph: &Graph) -> String {
    let batch = world.get_resource::<Activations>().map_or(0, |a| a.capacity);
    let shape = |dims: &[usize]| {
        let mut all = vec![batch.to_string()];
        all.extend(dims.iter().map(usize::to_string));
        format!("[{}]", all.join(", "))
    };
    let rows: Vec<(String, String, String, String)> = graph
        .nodes
        .iter()
        .map(|node| {
            let params: usize = node.op.params().iter().map(|p| p.slice.len).sum();
            let count = if params == 0 { "-".to_string() } else { thousands(params) };
            (node.name.clone(), node.op.label().to_string(), shape(&graph.values[node.output.0].shape), count)
        })
        .collect();
    let w =
        |f: fn(&(String, String, String, String)) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
    let (wn, wo, ws) = (w(|r| r.0.len(), 5), w(|r| r.1.len(), 2), w(|r| r.2.len(), 6));
    let mut out = format!("model {}\n", graph.arch);
    out.push_str(&format!("{:<wn$}  {:<wo$}  {:<ws$}  {:>12}\n", "layer", "op", "output", "params"));
    for (name, op, shape, count) in &rows {
        out.push_str(&format!("{name:<wn$}  {op:<wo$}  {shape:<ws$}  {count:>12}\n"));
    }
    let mut q = world.query::<(&ParamSlice, Has<Frozen>)>();
    let (mut total, mut trainable) = (0usize, 0usize);
    for (s, frozen) in q.iter(world) {
        total += s.len;
        if !frozen {
            trainable += s.len;
        }
    }
    let buffers = world.get_resource::<Buffers>().map_or(0, |b| b.arena.len());
    out.push_str(&format!(
        "parameters: {} total, {} trainable, {} frozen; buffers: {}\n",
        thousands(total),
        thousands(trainable),
        thousands(total - trainable),
        thousands(buffers)
    ));
    let m = MemoryEstimate::of(world);
    let state_names = world
        .get_resource::<OptimizerState>()
        .map(|s| s.buffers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let mut lines = vec![
        ("parameters", m.params, String::new()),
        ("gradients", m.grads, String::new()),
        (
            "optimizer state",
            m.optimizer_state,
            if state_names.is_empty() { String::new() } else { format!("({state_names})") },
        ),
        ("activations", m.activation_values, "(forward values)".to_string()),
        ("activation grads", m.activation_other, "(their gradients, saved state, scratch)".to_string()),
    ];
    if m.buffers > 0 {
        lines.push(("model buffers", m.buffers, "(batch-norm statistics)".into()));
    }
    lines.push(("batch", m.batch, "(inputs)".into()));
    if m.ema > 0 {
        lines.push(("ema", m.ema, "(averaged copy)".into()));
    }
    out.push_str(&format!("memory (f32, batch {batch}): {} in all\n", mib(m.total())));
    for (what, bytes, note) in lines {
        out.push_str(format!("  {what:<17} {:>11}  {note}", mib(bytes)).trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(85_002), "85,002");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
