// NAdam / NAdamW over a whole arena in one launch; the CPU twin is optim/nadam.rs (torch.optim.NAdam's
// single-tensor order). The momentum schedule and the running mu_product are scalars of the whole step,
// folded into the segment coefficients on the host. _rn intrinsics: no FMA contraction, the CPU's rounding.
//
// p, g, m (exp_avg), v (exp_avg_sq): [n]; segs: [nsegs] sorted.
// Segment coefficients: c0 decay (1 - lr*wd), c1 weight_decay, c2 lerp coefficient, c3 beta2, c4 1 - beta2,
// c5 1 - beta2^t, c6 eps, c7 gradient step, c8 average step.
// Flags: 1 coupled decay, 2 decoupled decay, 8 lerp from start (else from end).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) nadam_step_f32(float *p, const float *g, float *m, float *v, const Segment *segs,
                                          int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        const unsigned f = s->flags;
        float pi = p[i], gi = g[i];
        if (f & 2) pi = __fmul_rn(pi, c[0]);
        if (f & 1) gi = __fadd_rn(gi, __fmul_rn(c[1], pi));
        float mi = m[i];
        float base = (f & 8) ? mi : gi;
        mi = __fadd_rn(base, __fmul_rn(c[2], __fsub_rn(gi, mi)));
        float vi = __fadd_rn(__fmul_rn(v[i], c[3]), __fmul_rn(__fmul_rn(c[4], gi), gi));
        float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, c[5])), c[6]);
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[7], gi), denom));
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[8], mi), denom));
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
    }
}
