//! `model.pretrained` and `model.freeze`: initial weights from a safetensors file matched by tensor name
//! (with a report of missing and unexpected names, and a strict mode), and Frozen markers by name prefix.

use std::path::Path;

use bevy_ecs::prelude::*;
use ecstrain_components::{Buffers, Frozen, ParamInfo, ParamSlice, Params};
use ecstrain_systems::checkpoint::safetensors_io::{load_safetensors, LoadedCheckpoint, LoadedData, LoadedTensor};

/// Where a named model tensor lives: a parameter in the [`Params`] arena or a buffer in the [`Buffers`] arena.
#[derive(Clone, Debug)]
pub enum Slot {
    /// A trainable parameter.
    Param(ParamSlice),
    /// A buffer; `integer` ones (counters) may be stored as int64.
    Buffer {
        /// Place in the buffer arena.
        slice: ParamSlice,
        /// Stored as int64 by PyTorch.
        integer: bool,
    },
}

/// Every named tensor of the model (parameters in arena order, then buffers) with its shape and slot.
pub fn model_tensors(world: &mut World) -> Vec<(String, Vec<usize>, Slot)> {
    let mut q = world.query::<(&ParamInfo, &ParamSlice)>();
    let mut params: Vec<(&ParamInfo, &ParamSlice)> = q.iter(world).collect();
    params.sort_by_key(|(_, s)| s.offset);
    let mut out: Vec<(String, Vec<usize>, Slot)> =
        params.iter().map(|(i, s)| (i.name.clone(), i.shape.clone(), Slot::Param(**s))).collect();
    if let Some(b) = world.get_resource::<Buffers>() {
        out.extend(
            b.entries
                .iter()
                .map(|e| (e.name.clone(), e.shape.clone(), Slot::Buffer { slice: e.slice, integer: e.integer })),
        );
    }
    out
}

/// Copies a loaded tensor into its slot. Floats must be f32; integer buffers also accept int64. The caller has
/// checked the shape. Errors name the tensor's dtype.
pub fn copy_into(world: &mut World, slot: &Slot, t: &LoadedTensor) -> Result<(), String> {
    let wrong = || format!("is {} where float32 is expected", t.data.dtype_name());
    match slot {
        Slot::Param(s) => {
            world.resource_mut::<Params>().0.get_mut(*s).copy_from_slice(t.data.as_f32().ok_or_else(wrong)?);
        }
        Slot::Buffer { slice, integer } => {
            let mut b = world.resource_mut::<Buffers>();
            let dst = b.arena.get_mut(*slice);
            match (&t.data, integer) {
                (LoadedData::I64(v), true) => dst.iter_mut().zip(v).for_each(|(d, &s)| *d = s as f32),
                (LoadedData::F32(v), _) => dst.copy_from_slice(v),
                _ => return Err(wrong()),
            }
        }
    }
    Ok(())
}

/// Copies every parameter and buffer of the model from `ck` (read from `path`): each must be there under its
/// name with the model's shape; other tensors (optimizer state) are ignored. `key` starts every message (the
/// option that named the file: `run.resume`, `--checkpoint`). `prefix` is prepended to every name (`train.`:
/// the training weights of an EMA checkpoint, whose plain names hold the averages).
pub fn load_model_exact(
    world: &mut World,
    ck: &LoadedCheckpoint,
    path: &Path,
    key: &str,
    prefix: &str,
) -> Result<(), String> {
    let p = path.display();
    for (name, shape, slot) in model_tensors(world) {
        let name = format!("{prefix}{name}");
        let t = ck.tensors.get(&name).ok_or_else(|| format!("{key}: {p} has no tensor `{name}`"))?;
        if t.shape != shape {
            return Err(format!("{key}: {p}: `{name}` has shape {:?} but the model's is {shape:?}", t.shape));
        }
        copy_into(world, &slot, t).map_err(|e| format!("{key}: {p}: `{name}` {e}"))?;
    }
    Ok(())
}

/// Copies every tensor of `path` whose name is a parameter or buffer into the model. Returns a one-line
/// report; a shape mismatch, a wrong dtype, or (with `strict`) any missing or unexpected name is an error.
pub fn load_pretrained(world: &mut World, path: &Path, strict: bool) -> Result<String, String> {
    let p = path.display();
    if !path.is_file() {
        return Err(format!("model.pretrained: file not found: {p}"));
    }
    let ck = load_safetensors(path).map_err(|e| format!("model.pretrained: {e}"))?;
    let targets = model_tensors(world);
    let (mut loaded, mut missing, mut notes) = (0, Vec::new(), Vec::new());
    for (name, shape, slot) in &targets {
        let Some(t) = ck.tensors.get(name) else {
            missing.push(name.clone());
            continue;
        };
        let resized;
        let t = match interpolate_pos_embed(name, t, shape) {
            Some(Ok((r, note))) => {
                notes.push(note);
                resized = r;
                &resized
            }
            Some(Err(e)) => return Err(format!("model.pretrained: {p}: {e}")),
            None => t,
        };
        if &t.shape != shape {
            return Err(format!(
                "model.pretrained: {p}: `{name}` has shape {:?} but the model's is {shape:?}",
                t.shape
            ));
        }
        copy_into(world, slot, t).map_err(|e| format!("model.pretrained: {p}: `{name}` {e}"))?;
        loaded += 1;
    }
    // An engine checkpoint also holds optimizer state (`optimizer.*`) and, with EMA, the training weights
    // (`train.*`; the plain names are the averages): not model tensors, not "unexpected".
    let unexpected: Vec<&String> = ck
        .tensors
        .keys()
        .filter(|k| {
            !k.starts_with("optimizer.") && !k.starts_with("train.") && !targets.iter().any(|(n, _, _)| n == *k)
        })
        .collect();
    if strict && (!missing.is_empty() || !unexpected.is_empty()) {
        return Err(format!("model.pretrained (strict): {p}: missing {missing:?}, unexpected {unexpected:?}"));
    }
    Ok(format!(
        "loaded {loaded} of {} tensors from {p}; missing: {missing:?}; unexpected: {unexpected:?}{}",
        targets.len(),
        notes.iter().map(|n| format!("; {n}")).collect::<String>()
    ))
}

/// Side of a square patch grid of `tokens` tokens, if it is one.
fn grid_side(tokens: usize) -> Option<usize> {
    let s = (tokens as f64).sqrt().round() as usize;
    (s * s == tokens).then_some(s)
}

/// A ViT position embedding (`...pos_embed`, `[1, T, D]`) saved for another square patch grid, resized to the
/// model's grid as BLIP-2's `interpolate_pos_embed` does: the leading extra tokens (the class token) are kept,
/// the grid is resized bicubically (`align_corners=False`). `None` when the tensor is not such a case.
fn interpolate_pos_embed(
    name: &str,
    t: &LoadedTensor,
    want: &[usize],
) -> Option<Result<(LoadedTensor, String), String>> {
    let (&[1, t_old, d_old], &[1, t_new, d]) = (t.shape.as_slice(), want) else { return None };
    if !name.ends_with("pos_embed") || t_old == t_new || d_old != d {
        return None;
    }
    // Extra tokens: whatever the model's token count has beyond a square grid (0 or 1 for a class token), the
    // same in both, with a grid of at least one token on each side (an empty grid would make any two counts
    // "match": a class-token checkpoint for a mean-pooled model is a plain shape mismatch instead).
    let square = |t: usize| grid_side(t).filter(|&s| s > 0);
    let extra = (0..=t_new.min(t_old)).find(|&e| square(t_new - e).is_some() && square(t_old - e).is_some())?;
    let (old, new) = (grid_side(t_old - extra)?, grid_side(t_new - extra)?);
    let Some(src) = t.data.as_f32() else {
        return Some(Err(format!("`{name}` is {} where float32 is expected", t.data.dtype_name())));
    };
    // [T, D] token-major -> [D, old, old] planes, resize, back to tokens.
    let grid = &src[extra * d..];
    let mut planes = vec![0.0f32; d * old * old];
    for (tok, row) in grid.chunks_exact(d).enumerate() {
        for (ch, &v) in row.iter().enumerate() {
            planes[ch * old * old + tok] = v;
        }
    }
    let mut resized = vec![0.0f32; d * new * new];
    ecstrain_kernels::ops::interpolate::bicubic_resize(&mut resized, &planes, d, old, old, new, new);
    let mut out = src[..extra * d].to_vec();
    out.resize(t_new * d, 0.0);
    for tok in 0..new * new {
        for ch in 0..d {
            out[(extra + tok) * d + ch] = resized[ch * new * new + tok];
        }
    }
    let note = format!("interpolated `{name}` from a {old}x{old} to a {new}x{new} patch grid");
    Some(Ok((LoadedTensor { shape: want.to_vec(), data: LoadedData::F32(out) }, note)))
}

/// Marks every parameter whose name starts with one of `prefixes` [`Frozen`]; a prefix that matches nothing is
/// an error listing the parameter names.
pub fn freeze(world: &mut World, prefixes: &[String]) -> Result<usize, String> {
    let mut q = world.query::<(Entity, &ParamInfo)>();
    let all: Vec<(Entity, String)> = q.iter(world).map(|(e, i)| (e, i.name.clone())).collect();
    let mut frozen = 0;
    for prefix in prefixes {
        let hits: Vec<Entity> = all.iter().filter(|(_, n)| n.starts_with(prefix.as_str())).map(|(e, _)| *e).collect();
        if hits.is_empty() {
            let names: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
            return Err(format!("model.freeze: `{prefix}` matches no parameter; parameters: {}", names.join(", ")));
        }
        for e in hits {
            world.entity_mut(e).insert(Frozen);
            frozen += 1;
        }
    }
    Ok(frozen)
}
