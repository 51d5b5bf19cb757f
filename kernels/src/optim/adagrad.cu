// Adagrad over a whole arena in one launch; the CPU twin is optim/adagrad.rs (torch.optim.Adagrad's dense
// single-tensor order). _rn intrinsics: no FMA contraction, the CPU's rounding.
//
// p, g, sum (state_sum): [n]; segs: [nsegs] sorted.
// Segment coefficients: c0 weight_decay, c1 eps, c2 -lr / (1 + (t - 1) * lr_decay). Flags: 1 weight decay.

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adagrad_step_f32(float *p, const float *g, float *sum, const Segment *segs,
                                            int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        float pi = p[i], gi = g[i];
        if (s->flags & 1) gi = __fadd_rn(gi, __fmul_rn(c[0], pi));
        float si = __fadd_rn(sum[i], __fmul_rn(gi, gi));
        float std = __fadd_rn(__fsqrt_rn(si), c[1]);
        p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[2], gi), std));
        sum[i] = si;
    }
}
