// Adamax over a whole arena in one launch; the CPU twin is optim/adamax.rs (torch.optim.Adamax's
// single-tensor order). _rn intrinsics keep NVRTC from contracting into FMAs, so the rounding is the CPU's.
//
// p, g, m (exp_avg), u (exp_inf): [n]; segs: [nsegs] sorted.
// Segment coefficients: c0 weight_decay, c1 lerp coefficient, c2 beta2, c3 eps, c4 -lr / (1 - beta1^t).
// Flags: 1 coupled weight decay, 8 lerp from start (else from end).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adamax_step_f32(float *p, const float *g, float *m, float *u, const Segment *segs,
                                           int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        const unsigned f = s->flags;
        float pi = p[i], gi = g[i];
        if (f & 1) gi = __fadd_rn(gi, __fmul_rn(c[0], pi));
        float mi = m[i];
        float base = (f & 8) ? mi : gi;
        mi = __fadd_rn(base, __fmul_rn(c[1], __fsub_rn(gi, mi)));
        // torch.maximum(exp_inf * beta2, |g| + eps), keeping a NaN of the first operand as the CPU does.
        float a = __fmul_rn(u[i], c[2]);
        float b = __fadd_rn(fabsf(gi), c[3]);
        float ui = (isnan(a) || a > b) ? a : b;
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[4], mi), ui));
        m[i] = mi;
        u[i] = ui;
        p[i] = pi;
    }
}
