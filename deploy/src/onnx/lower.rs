//! Lowering of the graph IR to ONNX nodes, op by op. Every tensor carries the batch as its leading axis, so a
//! per-sample axis `a` is ONNX axis `a + 1`. Ops ONNX has are used directly (Gemm, Conv, MaxPool,
//! BatchNormalization, LayerNormalization, ...); the rest are written in primitives with the engine's own
//! semantics: exact GELU through Erf, attention as MatMul + Softmax on the fused q/k/v projection, adaptive
//! pooling with uneven bins as a product with its averaging matrix, vector quantization as an ArgMin over the
//! direct squared distances (ties to the lowest code, as the engine).

use std::collections::HashMap;

use ecstrain_components::{Activation, Graph, OpKind, ParamRef, ValueId};

use super::builder::{dims, Attr, GraphWriter};
use super::model::{ExportError, ModelView};
use super::proto::{tensor_proto::DataType, GraphProto};

/// Int8 quantization of a matrix-product node (linear or conv2d), symmetric with zero point 0: its input
/// activation with one scale, its weight per output channel.
#[derive(Clone, Debug, PartialEq)]
pub struct QdqNode {
    /// Scale of the input activation (`x ≈ scale * q`, q in [-128, 127]).
    pub input_scale: f32,
    /// The quantized weight, in the weight's own layout (`[out, in]` or `[oc, ic / groups, kh, kw]`).
    pub weight: Vec<i8>,
    /// One scale per output channel.
    pub weight_scales: Vec<f32>,
}

/// The quantized nodes of a graph, by node index; nodes not in it stay float.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QdqPlan {
    /// Node index -> its quantization.
    pub nodes: HashMap<usize, QdqNode>,
}

/// The lowering state: the writer and the ONNX name of every graph value written so far.
struct Lowering<'a, 'v> {
    view: &'a ModelView<'v>,
    w: GraphWriter,
    names: Vec<Option<String>>,
    qdq: Option<&'a QdqPlan>,
    /// Values that are already the output of a QuantizeLinear -> DequantizeLinear pair (a QAT fake
    /// quantization): a quantized matrix product reads them as they are.
    quantized: std::collections::HashSet<String>,
}

/// The whole graph as ONNX nodes and initializers (the caller adds the graph's input and output types).
pub fn lower_graph(view: &ModelView, qdq: Option<&QdqPlan>) -> Result<GraphProto, ExportError> {
    let g: &Graph = view.graph;
    let mut l = Lowering {
        view,
        w: GraphWriter::default(),
        names: vec![None; g.values.len()],
        qdq,
        quantized: Default::default(),
    };
    l.w.fresh("input");
    l.w.fresh("output");
    l.names[0] = Some("input".into());
    for (idx, node) in g.nodes.iter().enumerate() {
        let inputs = node.inputs.iter().map(|v| l.name(*v)).collect::<Result<Vec<String>, ExportError>>()?;
        let out = l.node(idx, &node.name, &node.op, &inputs, node)?;
        l.names[node.output.0] = Some(out);
    }
    let last = l.name(g.output)?;
    l.w.node_to("Identity", "output", &[&last], "output", &[]);
    Ok(l.w.finish(&g.arch))
}

impl Lowering<'_, '_> {
    fn name(&self, v: ValueId) -> Result<String, ExportError> {
        self.names.get(v.0).cloned().flatten().ok_or(ExportError::MissingValue(v.0))
    }

    fn shape(&self, v: ValueId) -> &[usize] {
        &self.view.graph.values[v.0].shape
    }

    /// A parameter as an initializer under its PyTorch name and shape.
    fn param(&mut self, r: &ParamRef) -> Result<String, ExportError> {
        let (name, shape, data) = self.view.param(r)?;
        Ok(self.w.f32_tensor(name, shape, data))
    }

    /// A float scalar constant.
    fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.w.f32_tensor(hint, &[], &[v])
    }

    /// `[-1, shape...]`: a reshape target keeping the batch.
    fn batched(&mut self, hint: &str, shape: &[usize]) -> String {
        let mut s = vec![-1i64];
        s.extend(dims(shape));
        self.w.i64s(&format!("{hint}.shape"), &s)
    }

    /// The input of a matrix-product node: the float value, or its QuantizeLinear -> DequantizeLinear pair.
    fn matmul_input(&mut self, idx: usize, hint: &str, x: &str) -> String {
        let Some(q) = self.qdq.and_then(|p| p.nodes.get(&idx)) else { return x.to_string() };
        if self.quantized.contains(x) {
            return x.to_string();
        }
        self.qdq_pair(hint, x, q.input_scale)
    }

    /// `DequantizeLinear(QuantizeLinear(x))` with a per-tensor int8 scale and zero point 0.
    fn qdq_pair(&mut self, hint: &str, x: &str, scale: f32) -> String {
        let s = self.scalar(&format!("{hint}.input_scale"), scale);
        let z = self.w.i8_tensor(&format!("{hint}.input_zero_point"), &[], &[0]);
        let xq = self.w.node("QuantizeLinear", &format!("{hint}.input_q"), &[x, &s, &z], &[]);
        let out = self.w.node("DequantizeLinear", &format!("{hint}.input_dq"), &[&xq, &s, &z], &[]);
        self.quantized.insert(out.clone());
        out
    }

    /// The weight of a matrix-product node, optionally transposed to `[in, out]` (a MatMul's right operand):
    /// the float initializer, or the int8 weight with its per-channel DequantizeLinear.
    fn matmul_weight(&mut self, idx: usize, r: &ParamRef, transpose: bool) -> Result<String, ExportError> {
        let (name, shape, data) = self.view.param(r)?;
        let (shape, name) = (shape.to_vec(), name.to_string());
        let t = |d: &[f32]| transpose_2d(d, shape[0], shape[1]);
        let q = self.qdq.and_then(|p| p.nodes.get(&idx));
        let Some(q) = q else {
            return Ok(if transpose {
                self.w.f32_tensor(&format!("{name}.T"), &[shape[1], shape[0]], &t(data))
            } else {
                self.w.f32_tensor(&name, &shape, data)
            });
        };
        if q.weight.len() != data.len() || q.weight_scales.len() != shape[0] {
            return Err(ExportError::Unsupported(format!("{name}: the quantized weight does not match its shape")));
        }
        let oc = shape[0];
        let (wq, wshape, axis) = if transpose {
            (transpose_2d(&q.weight, shape[0], shape[1]), vec![shape[1], shape[0]], 1)
        } else {
            (q.weight.clone(), shape.clone(), 0)
        };
        let wq = self.w.i8_tensor(&format!("{name}.int8"), &wshape, &wq);
        let s = self.w.f32_tensor(&format!("{name}.scale"), &[oc], &q.weight_scales);
        let z = self.w.i8_tensor(&format!("{name}.zero_point"), &[oc], &vec![0; oc]);
        Ok(self.w.node("DequantizeLinear", &format!("{name}.dq"), &[&wq, &s, &z], &[("axis", Attr::Int(axis))]))
    }

    /// One element-wise activation.
    fn activation(&mut self, a: Activation, hint: &str, x: &str) -> String {
        match a {
            Activation::Relu => self.w.node("Relu", hint, &[x], &[]),
            Activation::Sigmoid => self.w.node("Sigmoid", hint, &[x], &[]),
            Activation::Tanh => self.w.node("Tanh", hint, &[x], &[]),
            Activation::Silu => {
                let s = self.w.node("Sigmoid", hint, &[x], &[]);
                self.w.node("Mul", hint, &[x, &s], &[])
            }
            Activation::Gelu => {
                // 0.5 x (1 + erf(x / sqrt 2))
                let r2 = self.scalar("gelu.sqrt2", std::f32::consts::SQRT_2);
                let d = self.w.node("Div", hint, &[x, &r2], &[]);
                let e = self.w.node("Erf", hint, &[&d], &[]);
                self.half_x_one_plus(hint, x, &e)
            }
            Activation::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
                let c = self.scalar("gelu.coeff", 0.044715);
                let k = self.scalar("gelu.sqrt_2_over_pi", 0.797_884_6);
                let x2 = self.w.node("Mul", hint, &[x, x], &[]);
                let x3 = self.w.node("Mul", hint, &[&x2, x], &[]);
                let cx3 = self.w.node("Mul", hint, &[&x3, &c], &[]);
                let inner = self.w.node("Add", hint, &[x, &cx3], &[]);
                let u = self.w.node("Mul", hint, &[&inner, &k], &[]);
                let t = self.w.node("Tanh", hint, &[&u], &[]);
                self.half_x_one_plus(hint, x, &t)
            }
        }
    }

    /// `0.5 * x * (1 + t)`.
    fn half_x_one_plus(&mut self, hint: &str, x: &str, t: &str) -> String {
        let one = self.scalar("one", 1.0);
        let half = self.scalar("half", 0.5);
        let p = self.w.node("Add", hint, &[t, &one], &[]);
        let xp = self.w.node("Mul", hint, &[x, &p], &[]);
        self.w.node("Mul", hint, &[&xp, &half], &[])
    }

    /// The ONNX nodes of graph node `idx`; returns the name of its output.
    fn node(
        &mut self,
        idx: usize,
        hint: &str,
        op: &OpKind,
        inputs: &[String],
        node: &ecstrain_components::Node,
    ) -> Result<String, ExportError> {
        let x = inputs[0].as_str();
        let in_shape = self.shape(node.inputs[0]).to_vec();
        let out_shape = self.shape(node.output).to_vec();
        Ok(match op {
            OpKind::Linear { weight, bias, act, .. } => {
                let xin = self.matmul_input(idx, hint, x);
                let y = if in_shape.len() == 1 {
                    let w = self.matmul_weight(idx, weight, false)?;
                    let mut ins = vec![xin, w];
                    if let Some(b) = bias {
                        ins.push(self.param(b)?);
                    }
                    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                    self.w.node("Gemm", hint, &ins, &[("transB", Attr::Int(1))])
                } else {
                    let w = self.matmul_weight(idx, weight, true)?;
                    let m = self.w.node("MatMul", hint, &[&xin, &w], &[]);
                    match bias {
                        Some(b) => {
                            let b = self.param(b)?;
                            self.w.node("Add", hint, &[&m, &b], &[])
                        }
                        None => m,
                    }
                };
                match act {
                    Some(a) => self.activation(*a, hint, &y),
                    None => y,
                }
            }
            OpKind::Activation(a) => self.activation(*a, hint, x),
            OpKind::Conv2d { spec, weight, bias, .. } => {
                let xin = self.matmul_input(idx, hint, x);
                let w = self.matmul_weight(idx, weight, false)?;
                let mut ins = vec![xin, w];
                if let Some(b) = bias {
                    ins.push(self.param(b)?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                let (ph, pw) = spec.padding;
                let attrs = [
                    ("kernel_shape", Attr::Ints(dims(&[spec.kernel.0, spec.kernel.1]))),
                    ("strides", Attr::Ints(dims(&[spec.stride.0, spec.stride.1]))),
                    ("pads", Attr::Ints(dims(&[ph, pw, ph, pw]))),
                    ("dilations", Attr::Ints(dims(&[spec.dilation.0, spec.dilation.1]))),
                    ("group", Attr::Int(spec.groups as i64)),
                ];
                self.w.node("Conv", hint, &ins, &attrs)
            }
            OpKind::MaxPool2d { spec, .. } | OpKind::AvgPool2d { spec, .. } => {
                let (ph, pw) = spec.padding;
                let mut attrs = vec![
                    ("kernel_shape", Attr::Ints(dims(&[spec.kernel.0, spec.kernel.1]))),
                    ("strides", Attr::Ints(dims(&[spec.stride.0, spec.stride.1]))),
                    ("pads", Attr::Ints(dims(&[ph, pw, ph, pw]))),
                ];
                let name = if matches!(op, OpKind::MaxPool2d { .. }) {
                    "MaxPool"
                } else {
                    // PyTorch's default: padded zeros count in the divisor.
                    attrs.push(("count_include_pad", Attr::Int(1)));
                    "AveragePool"
                };
                self.w.node(name, hint, &[x], &attrs)
            }
            OpKind::AdaptiveAvgPool2d { in_chw: (c, h, w), out_hw: (oh, ow) } => {
                self.adaptive_avg_pool(hint, x, (*c, *h, *w), (*oh, *ow))
            }
            OpKind::GlobalAvgPool { .. } => {
                self.w.node("ReduceMean", hint, &[x], &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))])
            }
            OpKind::Reshape => {
                let s = self.batched(hint, &out_shape);
                self.w.node("Reshape", hint, &[x, &s], &[])
            }
            // Inverted dropout is the identity at inference.
            OpKind::Dropout { .. } => x.to_string(),
            OpKind::BatchNorm2d { channels, eps, weight, bias, stats, .. } => {
                let c = *channels;
                let scale = match weight {
                    Some(p) => self.param(p)?,
                    None => self.w.f32_tensor(&format!("{hint}.weight"), &[c], &vec![1.0; c]),
                };
                let shift = match bias {
                    Some(p) => self.param(p)?,
                    None => self.w.f32_tensor(&format!("{hint}.bias"), &[c], &vec![0.0; c]),
                };
                let arena = &self.view.buffers.arena.data;
                let st = arena.get(stats.range()).filter(|s| s.len() >= 2 * c).ok_or_else(|| {
                    ExportError::Unsupported(format!("{hint}: running statistics missing from the buffers"))
                })?;
                let mean = self.w.f32_tensor(&format!("{hint}.running_mean"), &[c], &st[..c]);
                let var = self.w.f32_tensor(&format!("{hint}.running_var"), &[c], &st[c..2 * c]);
                self.w.node(
                    "BatchNormalization",
                    hint,
                    &[x, &scale, &shift, &mean, &var],
                    &[("epsilon", Attr::Float(*eps as f32))],
                )
            }
            OpKind::LayerNorm { dim, eps, weight, bias } => {
                let scale = match weight {
                    Some(p) => self.param(p)?,
                    None => self.w.f32_tensor(&format!("{hint}.weight"), &[*dim], &vec![1.0; *dim]),
                };
                let mut ins = vec![x.to_string(), scale];
                if let Some(b) = bias {
                    ins.push(self.param(b)?);
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                self.w.node(
                    "LayerNormalization",
                    hint,
                    &ins,
                    &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(*eps as f32))],
                )
            }
            OpKind::Softmax { .. } => self.w.node("Softmax", hint, &[x], &[("axis", Attr::Int(-1))]),
            OpKind::Embedding { weight, .. } => {
                let table = self.param(weight)?;
                let ids = self.w.node("Cast", hint, &[x], &[("to", Attr::Int(DataType::Int64 as i64))]);
                self.w.node("Gather", hint, &[&table, &ids], &[("axis", Attr::Int(0))])
            }
            OpKind::Add => self.w.node("Add", hint, &[x, &inputs[1]], &[]),
            OpKind::Concat { axis } => {
                let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.w.node("Concat", hint, &ins, &[("axis", Attr::Int(*axis as i64 + 1))])
            }
            OpKind::Attention { heads, tokens, dim, causal } => self.attention(hint, x, *heads, *tokens, *dim, *causal),
            OpKind::Permute { perm, .. } => {
                let mut p = vec![0i64];
                p.extend(perm.iter().map(|&a| a as i64 + 1));
                self.w.node("Transpose", hint, &[x], &[("perm", Attr::Ints(p))])
            }
            OpKind::PrependToken { token } => {
                // Broadcast the [1, 1, D] token to [N, 1, D], then put it in front of the tokens.
                let t = self.param(token)?;
                let d = *in_shape.last().unwrap_or(&0);
                let n = self.w.node("Shape", hint, &[x], &[("start", Attr::Int(0)), ("end", Attr::Int(1))]);
                let rest = self.w.i64s(&format!("{hint}.token_shape"), &[1, d as i64]);
                let shape = self.w.node("Concat", hint, &[&n, &rest], &[("axis", Attr::Int(0))]);
                let tn = self.w.node("Expand", hint, &[&t, &shape], &[]);
                self.w.node("Concat", hint, &[&tn, x], &[("axis", Attr::Int(1))])
            }
            OpKind::AddParam { param } => {
                let p = self.param(param)?;
                self.w.node("Add", hint, &[x, &p], &[])
            }
            OpKind::TokenMean => {
                self.w.node("ReduceMean", hint, &[x], &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))])
            }
            OpKind::SelectToken { index } => {
                let i = self.w.i64_tensor(&format!("{hint}.index"), &[], &[*index as i64]);
                self.w.node("Gather", hint, &[x, &i], &[("axis", Attr::Int(1))])
            }
            OpKind::Upsample { factor: (fh, fw), .. } => {
                let scales = self.w.f32_tensor(&format!("{hint}.scales"), &[4], &[1.0, 1.0, *fh as f32, *fw as f32]);
                // asymmetric + floor: output pixel i reads input pixel floor(i / factor), exactly.
                self.w.node(
                    "Resize",
                    hint,
                    &[x, "", &scales],
                    &[
                        ("mode", Attr::Str("nearest")),
                        ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                        ("nearest_mode", Attr::Str("floor")),
                    ],
                )
            }
            OpKind::VectorQuantize { codebook, dim, .. } => self.vector_quantize(hint, x, codebook, *dim, &in_shape)?,
            OpKind::FakeQuantize { amax, .. } => {
                let a =
                    self.view.buffers.arena.data.get(amax.range()).and_then(|a| a.first()).ok_or_else(|| {
                        ExportError::Unsupported(format!("{hint}: its amax is missing from the buffers"))
                    })?;
                let scale = ecstrain_kernels::quant::qparams::scale_from_amax(*a);
                self.qdq_pair(hint, x, scale)
            }
        })
    }

    /// `nn.AdaptiveAvgPool2d`: an AveragePool when the bins are even, else `[N, C, H*W] @ P[H*W, OH*OW]` with
    /// PyTorch's bins (`start = floor(i H / OH)`, `end = ceil((i + 1) H / OH)`).
    fn adaptive_avg_pool(
        &mut self,
        hint: &str,
        x: &str,
        (c, h, w): (usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> String {
        if h % oh == 0 && w % ow == 0 {
            let k = dims(&[h / oh, w / ow]);
            return self.w.node(
                "AveragePool",
                hint,
                &[x],
                &[("kernel_shape", Attr::Ints(k.clone())), ("strides", Attr::Ints(k))],
            );
        }
        let bin = |i: usize, n: usize, o: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
        let mut p = vec![0.0f32; h * w * oh * ow];
        for a in 0..oh {
            let (r0, r1) = bin(a, h, oh);
            for b in 0..ow {
                let (c0, c1) = bin(b, w, ow);
                let inv = 1.0 / ((r1 - r0) * (c1 - c0)) as f32;
                for r in r0..r1 {
                    for col in c0..c1 {
                        p[(r * w + col) * oh * ow + a * ow + b] = inv;
                    }
                }
            }
        }
        let flat = self.batched(hint, &[c, h * w]);
        let xf = self.w.node("Reshape", hint, &[x, &flat], &[]);
        let pm = self.w.f32_tensor(&format!("{hint}.bins"), &[h * w, oh * ow], &p);
        let y = self.w.node("MatMul", hint, &[&xf, &pm], &[]);
        let back = self.batched(hint, &[c, oh, ow]);
        self.w.node("Reshape", hint, &[&y, &back], &[])
    }

    /// Self-attention on the fused projection `[N, T, 3D]` laid out as `[N, T, 3, H, D/H]`.
    fn attention(&mut self, hint: &str, x: &str, heads: usize, t: usize, d: usize, causal: bool) -> String {
        let dh = d / heads;
        let split = self.w.i64s(&format!("{hint}.qkv_shape"), &dims(&[0, t, 3, heads, dh]));
        let qkv = self.w.node("Reshape", hint, &[x, &split], &[]);
        // [3, N, H, T, Dh]
        let qkv = self.w.node("Transpose", hint, &[&qkv], &[("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))]);
        let part = |i: i64, l: &mut Self| {
            let idx = l.w.i64_tensor(&format!("{hint}.qkv_index"), &[], &[i]);
            l.w.node("Gather", hint, &[&qkv, &idx], &[("axis", Attr::Int(0))])
        };
        let q = part(0, self);
        let k = part(1, self);
        let v = part(2, self);
        let kt = self.w.node("Transpose", hint, &[&k], &[("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
        let s = self.w.node("MatMul", hint, &[&q, &kt], &[]);
        let scale = self.scalar(&format!("{hint}.scale"), (1.0 / (dh as f64).sqrt()) as f32);
        let mut s = self.w.node("Mul", hint, &[&s, &scale], &[]);
        if causal {
            let mut mask = vec![0.0f32; t * t];
            for i in 0..t {
                for j in i + 1..t {
                    mask[i * t + j] = f32::NEG_INFINITY;
                }
            }
            let m = self.w.f32_tensor(&format!("{hint}.causal_mask"), &[t, t], &mask);
            s = self.w.node("Add", hint, &[&s, &m], &[]);
        }
        let att = self.w.node("Softmax", hint, &[&s], &[("axis", Attr::Int(-1))]);
        let o = self.w.node("MatMul", hint, &[&att, &v], &[]);
        let o = self.w.node("Transpose", hint, &[&o], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let merged = self.w.i64s(&format!("{hint}.merged_shape"), &dims(&[0, t, d]));
        self.w.node("Reshape", hint, &[&o, &merged], &[])
    }

    /// Nearest code of every position of `[N, D, H, W]` (direct squared distances, first minimum), replaced by
    /// the code: the inference value of the straight-through output.
    fn vector_quantize(
        &mut self,
        hint: &str,
        x: &str,
        codebook: &ParamRef,
        dim: usize,
        in_shape: &[usize],
    ) -> Result<String, ExportError> {
        let e = self.param(codebook)?;
        let spatial: Vec<usize> = in_shape[1..].to_vec();
        let rank = in_shape.len() as i64;
        // [N, D, S...] -> [N, S..., D] -> [M, 1, D]
        let mut to_last = vec![0i64];
        to_last.extend(2..=rank);
        to_last.push(1);
        let zt = self.w.node("Transpose", hint, &[x], &[("perm", Attr::Ints(to_last))]);
        let rows = self.w.i64s(&format!("{hint}.rows"), &[-1, 1, dim as i64]);
        let z = self.w.node("Reshape", hint, &[&zt, &rows], &[]);
        let diff = self.w.node("Sub", hint, &[&z, &e], &[]);
        let sq = self.w.node("Mul", hint, &[&diff, &diff], &[]);
        let axis = self.w.i64s(&format!("{hint}.axis"), &[2]);
        let dist = self.w.node("ReduceSum", hint, &[&sq, &axis], &[("keepdims", Attr::Int(0))]);
        let k = self.w.node("ArgMin", hint, &[&dist], &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))]);
        let zq = self.w.node("Gather", hint, &[&e, &k], &[("axis", Attr::Int(0))]);
        let mut s = vec![-1i64];
        s.extend(dims(&spatial));
        s.push(dim as i64);
        let back = self.w.i64s(&format!("{hint}.spatial_shape"), &s);
        let zq = self.w.node("Reshape", hint, &[&zq, &back], &[]);
        let mut to_first = vec![0i64, rank];
        to_first.extend(1..rank);
        Ok(self.w.node("Transpose", hint, &[&zq], &[("perm", Attr::Ints(to_first))]))
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose_2d<T: Copy>(d: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(d.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(d[r * cols + c]);
        }
    }
    out
}
