//! Per-op timing of the graph executor (`run.profile`), the CPU counterpart of `torch.profiler`'s
//! `key_averages()` table: where a training step's time goes, by op kind and by layer.
//!
//! The executor reads a clock around every node only when [`Activations::profile`](super::Activations) is
//! set, so an unprofiled run pays one branch per node. Times are wall-clock nanoseconds of the calling thread,
//! which for our kernels include the rayon work they fan out and wait for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use ecstrain_components::{Graph, Mode};

/// Accumulated wall time per node, split into training forward, backward and evaluation forward.
#[derive(Clone, Debug, PartialEq)]
pub struct OpProfile {
    /// `[node]`: nanoseconds in the forward in training mode.
    pub train_forward_ns: Vec<u64>,
    /// `[node]`: nanoseconds in the backward.
    pub backward_ns: Vec<u64>,
    /// `[node]`: nanoseconds in the forward in evaluation mode (validation, test).
    pub eval_forward_ns: Vec<u64>,
    /// Training forward passes recorded.
    pub train_passes: u64,
    /// Backward passes recorded.
    pub backward_passes: u64,
    /// `absorbed_by[node]`: the node that did this one's work in a fused kernel (a convolution running its
    /// max pool and ReLU): this node's time is in that node's row, which is labelled with all of them.
    pub absorbed_by: Vec<Option<usize>>,
    /// Evaluation forward passes recorded.
    pub eval_passes: u64,
}

/// One row of the report: an op kind or a layer, with its times in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// Op kind (`Linear`, `LayerNorm`) or node name with its label.
    pub name: String,
    /// Nodes this row sums.
    pub nodes: usize,
    /// Mean training-forward milliseconds per pass.
    pub forward_ms: f64,
    /// Mean backward milliseconds per pass.
    pub backward_ms: f64,
    /// Mean evaluation-forward milliseconds per pass.
    pub eval_ms: f64,
}

impl ProfileRow {
    /// Forward plus backward per training step.
    pub fn train_ms(&self) -> f64 {
        self.forward_ms + self.backward_ms
    }
}

/// The op kind of a label: `Linear(128, 384) + Gelu` -> `Linear + Gelu`, `LayerNorm(128)` -> `LayerNorm`.
fn kind_of(label: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for ch in label.chars() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.trim().to_string()
}

impl OpProfile {
    /// An empty profile for a graph of `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        OpProfile {
            train_forward_ns: vec![0; nodes],
            backward_ns: vec![0; nodes],
            eval_forward_ns: vec![0; nodes],
            absorbed_by: vec![None; nodes],
            train_passes: 0,
            backward_passes: 0,
            eval_passes: 0,
        }
    }

    /// Adds one node's forward time.
    pub fn add_forward(&mut self, node: usize, mode: Mode, since: Instant) {
        let ns = since.elapsed().as_nanos() as u64;
        match mode {
            Mode::Train => self.train_forward_ns[node] += ns,
            Mode::Eval => self.eval_forward_ns[node] += ns,
        }
    }

    /// Adds one node's backward time.
    pub fn add_backward(&mut self, node: usize, since: Instant) {
        self.backward_ns[node] += since.elapsed().as_nanos() as u64;
    }

    /// Counts a finished forward pass.
    pub fn end_forward(&mut self, mode: Mode) {
        match mode {
            Mode::Train => self.train_passes += 1,
            Mode::Eval => self.eval_passes += 1,
        }
    }

    /// Counts a finished backward pass.
    pub fn end_backward(&mut self) {
        self.backward_passes += 1;
    }

    fn row(&self, name: String, nodes: &[usize]) -> ProfileRow {
        // The nodes' own times and those of the nodes they ran fused (a fused backward may be timed at the
        // absorbed node it is visited with first).
        let members: Vec<usize> = (0..self.absorbed_by.len())
            .filter(|&j| nodes.contains(&j) || self.absorbed_by[j].is_some_and(|by| nodes.contains(&by)))
            .collect();
        let mean =
            |v: &[u64], passes: u64| members.iter().map(|&i| v[i]).sum::<u64>() as f64 / 1e6 / passes.max(1) as f64;
        ProfileRow {
            name,
            nodes: nodes.len(),
            forward_ms: mean(&self.train_forward_ns, self.train_passes),
            backward_ms: mean(&self.backward_ns, self.backward_passes),
            eval_ms: mean(&self.eval_forward_ns, self.eval_passes),
        }
    }

    /// Node `i`'s label, followed by ` + label` for every node it ran fused.
    fn label(&self, graph: &Graph, i: usize) -> String {
        let mut label = graph.nodes[i].op.label();
        for (j, by) in self.absorbed_by.iter().enumerate() {
            if *by == Some(i) {
                label = format!("{label} + {}", graph.nodes[j].op.label());
            }
        }
        label
    }

    /// Nodes whose work another node did (their rows would be empty).
    fn absorbed(&self) -> Vec<usize> {
        (0..self.absorbed_by.len()).filter(|&j| self.absorbed_by[j].is_some()).collect()
    }

    /// Rows per op kind, slowest training step first.
    pub fn by_kind(&self, graph: &Graph) -> Vec<ProfileRow> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let absorbed = self.absorbed();
        for i in (0..graph.nodes.len()).filter(|i| !absorbed.contains(i)) {
            groups.entry(kind_of(&self.label(graph, i))).or_default().push(i);
        }
        let mut rows: Vec<_> = groups.into_iter().map(|(k, idx)| self.row(k, &idx)).collect();
        rows.sort_by(|a, b| b.train_ms().total_cmp(&a.train_ms()).then(b.eval_ms.total_cmp(&a.eval_ms)));
        rows
    }

    /// Rows per node, in graph order.
    pub fn by_node(&self, graph: &Graph) -> Vec<ProfileRow> {
        let absorbed = self.absorbed();
        graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !absorbed.contains(i))
            .map(|(i, node)| {
                let label = self.label(graph, i);
                let name = if node.name.is_empty() { label } else { format!("{} {}", node.name, label) };
                self.row(name, &[i])
            })
            .collect()
    }

    /// The report written to `profile.txt`: the per-kind table, then every node.
    pub fn report(&self, graph: &Graph) -> String {
        let kinds = self.by_kind(graph);
        let total: f64 = kinds.iter().map(ProfileRow::train_ms).sum();
        let eval_total: f64 = kinds.iter().map(|r| r.eval_ms).sum();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Graph ops per training step (mean of {} forward and {} backward passes; evaluation: {} passes)",
            self.train_passes, self.backward_passes, self.eval_passes
        );
        let table = |s: &mut String, rows: &[ProfileRow], share: bool| {
            let _ = writeln!(
                s,
                "{:<44} {:>5} {:>11} {:>11} {:>11} {:>7} {:>10}",
                "op", "nodes", "forward ms", "backward ms", "step ms", "share", "eval ms"
            );
            for r in rows {
                let pct =
                    if share && total > 0.0 { format!("{:.1}%", 100.0 * r.train_ms() / total) } else { "".into() };
                let _ = writeln!(
                    s,
                    "{:<44} {:>5} {:>11.3} {:>11.3} {:>11.3} {:>7} {:>10.3}",
                    r.name,
                    r.nodes,
                    r.forward_ms,
                    r.backward_ms,
                    r.train_ms(),
                    pct,
                    r.eval_ms
                );
            }
        };
        table(&mut s, &kinds, true);
        let _ = writeln!(
            s,
            "{:<44} {:>5} {:>11} {:>11} {:>11.3} {:>7} {:>10.3}",
            "total",
            // Rows, not graph nodes: a fused group is one row.
            kinds.iter().map(|r| r.nodes).sum::<usize>(),
            "",
            "",
            total,
            "",
            eval_total
        );
        let _ = writeln!(s, "\nPer node, in graph order");
        table(&mut s, &self.by_node(graph), true);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_drop_arguments() {
        assert_eq!(kind_of("Linear(128, 384) + Gelu"), "Linear + Gelu");
        assert_eq!(kind_of("LayerNorm(128)"), "LayerNorm");
        assert_eq!(kind_of("Permute([0, 2, 1])"), "Permute");
        assert_eq!(kind_of("Add"), "Add");
    }

    #[test]
    fn means_are_per_pass() {
        let mut p = OpProfile::new(2);
        p.train_forward_ns = vec![4_000_000, 2_000_000];
        p.backward_ns = vec![6_000_000, 0];
        p.eval_forward_ns = vec![1_000_000, 1_000_000];
        p.train_passes = 2;
        p.backward_passes = 2;
        p.eval_passes = 1;
        let r = p.row("x".into(), &[0, 1]);
        assert_eq!((r.nodes, r.forward_ms, r.backward_ms, r.eval_ms), (2, 3.0, 3.0, 2.0));
        assert_eq!(r.train_ms(), 6.0);
    }
}
