//! The sample order of an epoch: a seeded permutation (or the identity), then this rank's part of it, split
//! as `torch.utils.data.DistributedSampler` splits it, then cut into batches.

use ecstrain_components::Shard;
use ecstrain_kernels::rng::Rng;

/// Key of the epoch-order stream in [`Rng::derive`] (kept: existing runs keep their order).
const ORDER_KEY: u64 = 0x5A4F;

/// How a loader walks its dataset: what decides the order of an epoch and how it is cut into batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderSpec {
    /// Samples in the dataset.
    pub len: usize,
    /// Samples per batch (at least 1).
    pub batch: usize,
    /// A fresh seeded permutation every epoch (else the dataset order).
    pub shuffle: bool,
    /// Cut the rank's part to a multiple of the world size instead of padding it, and drop the last
    /// incomplete batch.
    pub drop_last: bool,
    /// Seed of the permutations.
    pub seed: u64,
    /// This rank's part of the data.
    pub shard: Shard,
}

impl OrderSpec {
    /// Samples this rank sees per epoch.
    pub fn samples_per_epoch(&self) -> usize {
        self.shard.samples(self.len, self.drop_last)
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples_per_epoch();
        if self.drop_last {
            n / self.batch
        } else {
            n.div_ceil(self.batch)
        }
    }

    /// The batch after batch `b` of epoch `epoch`: the next one, or the first of the next epoch.
    pub fn next(&self, epoch: u64, b: usize) -> (u64, usize) {
        if b + 1 < self.batches_per_epoch() {
            (epoch, b + 1)
        } else {
            (epoch + 1, 0)
        }
    }
}

/// The order of one epoch, with its buffers kept between epochs (recomputing allocates nothing).
#[derive(Clone, Debug, Default)]
pub struct EpochOrder {
    /// The epoch `part` was computed for (`None` before the first).
    epoch: Option<u64>,
    /// The whole dataset's permutation of that epoch (the same on every rank).
    perm: Vec<usize>,
    /// This rank's positions of the padded (or cut) permutation: what its batches are made of. Empty with a
    /// world of 1, whose part is the permutation itself (no second copy of a large index).
    part: Vec<usize>,
    /// The part is all of `perm` (a world of 1).
    whole: bool,
}

impl EpochOrder {
    /// An order with room for `spec`'s dataset, not yet computed for any epoch.
    pub fn new(spec: &OrderSpec) -> EpochOrder {
        let part = if spec.shard.world > 1 { spec.samples_per_epoch() } else { 0 };
        EpochOrder { epoch: None, perm: Vec::with_capacity(spec.len), part: Vec::with_capacity(part), whole: false }
    }

    /// Makes this the order of `epoch` (no-op when it already is).
    pub fn set_epoch(&mut self, spec: &OrderSpec, epoch: u64) {
        if self.epoch == Some(epoch) {
            return;
        }
        self.epoch = Some(epoch);
        self.perm.clear();
        self.perm.extend(0..spec.len);
        if spec.shuffle {
            Rng::derive(spec.seed, &[ORDER_KEY, epoch]).shuffle(&mut self.perm);
        }
        // DistributedSampler: pad by repeating the permutation from its start (as often as needed) up to a
        // multiple of the world, or cut it to one with drop_last; rank r takes positions r, r + world, ...
        let world = spec.shard.world.max(1);
        let total = spec.samples_per_epoch() * world;
        self.part.clear();
        self.whole = world == 1;
        if !self.whole && spec.len > 0 {
            self.part.extend((spec.shard.rank..total).step_by(world).map(|i| self.perm[i % spec.len]));
        }
    }

    /// The epoch the order is for, if computed.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// This rank's samples of the epoch, in order.
    pub fn samples(&self) -> &[usize] {
        if self.whole {
            &self.perm
        } else {
            &self.part
        }
    }

    /// The dataset indices of batch `b` (the last batch may be shorter; empty past the end).
    pub fn batch(&self, spec: &OrderSpec, b: usize) -> &[usize] {
        let part = self.samples();
        let start = (b * spec.batch).min(part.len());
        let end = (start + spec.batch).min(part.len());
        &part[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(len: usize, batch: usize, shuffle: bool, drop_last: bool, rank: usize, world: usize) -> OrderSpec {
        OrderSpec { len, batch, shuffle, drop_last, seed: 3, shard: Shard::new(rank, world).unwrap() }
    }

    fn part(s: &OrderSpec, epoch: u64) -> Vec<usize> {
        let mut o = EpochOrder::new(s);
        o.set_epoch(s, epoch);
        o.samples().to_vec()
    }

    #[test]
    fn world_one_is_the_plain_seeded_order() {
        let s = spec(10, 3, true, false, 0, 1);
        let mut expected: Vec<usize> = (0..10).collect();
        Rng::derive(3, &[0x5A4F, 4]).shuffle(&mut expected);
        assert_eq!(part(&s, 4), expected);
        assert_ne!(part(&s, 4), part(&s, 5), "each epoch gets its own permutation");
        assert_eq!(part(&spec(10, 3, false, false, 0, 1), 7), (0..10).collect::<Vec<_>>());
        assert_eq!(s.batches_per_epoch(), 4);
        assert_eq!(spec(10, 3, true, true, 0, 1).batches_per_epoch(), 3);
    }

    #[test]
    fn ranks_partition_the_padded_permutation_as_distributed_sampler() {
        // 10 samples on 4 ranks: padded to 12 by repeating the first two of the permutation.
        let world = 4;
        let parts: Vec<Vec<usize>> = (0..world).map(|r| part(&spec(10, 2, true, false, r, world), 1)).collect();
        let perm = part(&spec(10, 2, true, false, 0, 1), 1);
        let padded: Vec<usize> = (0..12).map(|i| perm[i % 10]).collect();
        for (r, p) in parts.iter().enumerate() {
            assert_eq!(p.len(), 3, "equal counts");
            let expected: Vec<usize> = padded.iter().skip(r).step_by(world).copied().collect();
            assert_eq!(*p, expected, "rank {r} takes positions r, r + world, ...");
        }
        let mut all: Vec<usize> = parts.concat();
        all.sort_unstable();
        let mut want: Vec<usize> = (0..10).chain([perm[0], perm[1]]).collect();
        want.sort_unstable();
        assert_eq!(all, want, "every sample once, plus the padding");
        // With drop_last the permutation is cut to 8: every rank gets 2 and two samples sit out.
        let cut: Vec<Vec<usize>> = (0..world).map(|r| part(&spec(10, 2, true, true, r, world), 1)).collect();
        for (r, p) in cut.iter().enumerate() {
            let expected: Vec<usize> = perm[..8].iter().skip(r).step_by(world).copied().collect();
            assert_eq!(*p, expected);
        }
    }

    #[test]
    fn padding_repeats_the_permutation_when_the_world_exceeds_the_data() {
        // torch: indices += (indices * ceil(pad / len))[:pad]: 3 samples on 8 ranks -> 8 positions.
        let s = |r| spec(3, 1, false, false, r, 8);
        let got: Vec<usize> = (0..8).flat_map(|r| part(&s(r), 0)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(s(0).batches_per_epoch(), 1);
        assert!(part(&spec(3, 1, false, true, 5, 8), 0).is_empty(), "drop_last leaves nothing per rank");
    }

    #[test]
    fn batches_cut_the_rank_part_and_wrap_to_the_next_epoch() {
        let s = spec(11, 4, true, false, 1, 2);
        let mut o = EpochOrder::new(&s);
        o.set_epoch(&s, 2);
        assert_eq!(s.samples_per_epoch(), 6);
        assert_eq!(s.batches_per_epoch(), 2);
        assert_eq!(o.batch(&s, 0), &o.samples()[..4]);
        assert_eq!(o.batch(&s, 1), &o.samples()[4..]);
        assert_eq!(s.next(2, 0), (2, 1));
        assert_eq!(s.next(2, 1), (3, 0));
        let cap = (o.perm.capacity(), o.part.capacity());
        o.set_epoch(&s, 3);
        assert_eq!((o.perm.capacity(), o.part.capacity()), cap, "recomputing reuses the buffers");
    }
}
