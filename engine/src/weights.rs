//! `model.pretrained` and `model.freeze`: initial weights from a safetensors file matched by parameter name
//! (with a report of missing and unexpected names, and a strict mode), and Frozen markers by name prefix.

use std::path::Path;

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, ParamInfo, ParamSlice, Params};
use ecstrain_systems::checkpoint::safetensors_io::load_safetensors;

/// Copies every tensor of `path` whose name is a parameter into the parameter arena. Returns a one-line
/// report; a shape mismatch, a non-f32 tensor, or (with `strict`) any missing or unexpected name is an error.
pub fn load_pretrained(world: &mut World, path: &Path, strict: bool) -> Result<String, String> {
    let p = path.display();
    if !path.is_file() {
        return Err(format!("model.pretrained: file not found: {p}"));
    }
    let ck = load_safetensors(path).map_err(|e| format!("model.pretrained: {e}"))?;
    let mut q = world.query::<(&ParamInfo, &ParamSlice)>();
    let params: Vec<(ParamInfo, ParamSlice)> = q.iter(world).map(|(i, s)| (i.clone(), *s)).collect();
    let mut arena = world.resource_mut::<Params>();
    let (mut loaded, mut missing) = (0, Vec::new());
    for (info, slice) in &params {
        let Some(t) = ck.tensors.get(&info.name) else {
            missing.push(info.name.clone());
            continue;
        };
        if t.shape != info.shape {
            return Err(format!(
                "model.pretrained: {p}: `{}` has shape {:?} but the model's is {:?}",
                info.name, t.shape, info.shape
            ));
        }
        let data = t.data.as_f32().ok_or_else(|| format!("model.pretrained: {p}: `{}` is not float32", info.name))?;
        arena.0.get_mut(*slice).copy_from_slice(data);
        loaded += 1;
    }
    // An engine checkpoint also holds optimizer state (`optimizer.*`): not parameters, not "unexpected".
    let unexpected: Vec<&String> = ck
        .tensors
        .keys()
        .filter(|k| !k.starts_with("optimizer.") && !params.iter().any(|(i, _)| &i.name == *k))
        .collect();
    if strict && (!missing.is_empty() || !unexpected.is_empty()) {
        return Err(format!("model.pretrained (strict): {p}: missing {missing:?}, unexpected {unexpected:?}"));
    }
    Ok(format!(
        "loaded {loaded} of {} parameters from {p}; missing: {missing:?}; unexpected: {unexpected:?}",
        params.len()
    ))
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
