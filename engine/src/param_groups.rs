//! Parameter groups from the config, as components on parameter entities: layer-wise learning-rate decay
//! (`run.layer_decay`) as [`LrScale`]. (Weight-decay exemption, [`NoDecay`](ecstrain_components::NoDecay), is
//! set by the graph builder for 1-d parameters; [`Frozen`](ecstrain_components::Frozen) by `model.freeze`.)

use bevy_ecs::prelude::*;
use ecstrain_components::{LrScale, ParamInfo};

/// The layer of a transformer parameter as BEiT / MAE's `param_groups_lrd` number them (the scheme BLIP-2's
/// `get_optimizer_params` applies to its ViT): the embeddings (`patch_embed`, `cls_token`, `pos_embed`) are
/// layer 0, `blocks.k` is layer k + 1, anything else (the final norm) is layer `depth + 1` and keeps the full
/// learning rate, as does the classifier `head` (None: no scale at all).
fn layer_of(name: &str, depth: usize) -> Option<usize> {
    if name.starts_with("head.") {
        return None;
    }
    if ["patch_embed.", "cls_token", "pos_embed"].iter().any(|p| name.starts_with(p)) {
        return Some(0);
    }
    match block_index(name) {
        Some(k) => Some(k + 1),
        None => Some(depth + 1),
    }
}

/// `k` of a `blocks.k.` name.
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blocks.")?.split('.').next()?.parse().ok()
}

/// Gives every parameter of a transformer the learning-rate scale `decay^(depth + 1 - layer)` (BLIP-2's
/// `lr_scales`), so the last block trains at `decay` times the rate of the head and the embeddings at
/// `decay^(depth + 1)`. Returns the number of parameters scaled; a model without `blocks.N.` parameters is an
/// error naming the key.
pub fn apply_layer_decay(world: &mut World, decay: f64) -> Result<usize, String> {
    let mut q = world.query::<(Entity, &ParamInfo)>();
    let all: Vec<(Entity, String)> = q.iter(world).map(|(e, i)| (e, i.name.clone())).collect();
    let Some(depth) = all.iter().filter_map(|(_, n)| block_index(n)).max().map(|k| k + 1) else {
        return Err(
            "run.layer_decay needs a transformer whose parameters are named blocks.N.* (e.g. arch: vit); this model has none"
                .to_string(),
        );
    };
    let mut scaled = 0;
    for (e, name) in all {
        if let Some(layer) = layer_of(&name, depth) {
            world.entity_mut(e).insert(LrScale(decay.powi((depth + 1 - layer) as i32)));
            scaled += 1;
        }
    }
    Ok(scaled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_numbered_as_blip2_numbers_its_vit() {
        assert_eq!(layer_of("cls_token", 4), Some(0));
        assert_eq!(layer_of("patch_embed.proj.weight", 4), Some(0));
        assert_eq!(layer_of("blocks.0.attn.qkv.weight", 4), Some(1));
        assert_eq!(layer_of("blocks.3.mlp.fc2.bias", 4), Some(4));
        assert_eq!(layer_of("norm.weight", 4), Some(5));
        assert_eq!(layer_of("head.weight", 4), None);
    }

    #[test]
    fn scales_follow_the_decay_and_need_blocks() {
        let mut w = World::new();
        let names = ["pos_embed", "blocks.0.norm1.weight", "blocks.1.mlp.fc1.weight", "norm.bias", "head.weight"];
        let ids: Vec<Entity> =
            names.iter().map(|n| w.spawn(ParamInfo { name: n.to_string(), shape: vec![1] }).id()).collect();
        assert_eq!(apply_layer_decay(&mut w, 0.5).unwrap(), 4);
        let scale = |e: Entity| w.get::<LrScale>(e).map(|s| s.0);
        // depth 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, final norm 0.5^0 = 1, head untouched.
        assert_eq!(
            ids.iter().map(|&e| scale(e)).collect::<Vec<_>>(),
            [Some(0.125), Some(0.25), Some(0.5), Some(1.0), None]
        );
        let mut w = World::new();
        w.spawn(ParamInfo { name: "layers.0.weight".into(), shape: vec![1] });
        assert!(apply_layer_decay(&mut w, 0.5).unwrap_err().contains("run.layer_decay"));
    }
}
