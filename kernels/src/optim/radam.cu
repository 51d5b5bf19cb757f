// RAdam / RAdamW over a whole arena in one launch; the CPU twin is optim/radam.rs (torch.optim.RAdam's
// single-tensor order). Whether step t is rectified (rho_t > 5) is decided on the host per step and passed
// as a flag. _rn intrinsics: no FMA contraction, the CPU's rounding.
//
// p, g, m (exp_avg), v (exp_avg_sq): [n]; segs: [nsegs] sorted.
// Segment coefficients: c0 decay (1 - lr*wd), c1 weight_decay, c2 lerp coefficient, c3 beta2, c4 1 - beta2,
// c5 1 - beta1^t, c6 lr, c7 sqrt(1 - beta2^t), c8 eps, c9 rectification factor.
// Flags: 1 coupled decay, 2 decoupled decay, 4 rectified update, 8 lerp from start (else from end).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) radam_step_f32(float *p, const float *g, float *m, float *v, const Segment *segs,
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
        float m_hat = __fdiv_rn(mi, c[5]);
        if (f & 4) {
            // sqrt(bc2) / (sqrt(v) + eps), which Python evaluates as (..).reciprocal() * sqrt(bc2).
            float adaptive = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(__fsqrt_rn(vi), c[8])), c[7]);
            pi = __fsub_rn(pi, __fmul_rn(__fmul_rn(__fmul_rn(m_hat, c[6]), adaptive), c[9]));
        } else {
            pi = __fsub_rn(pi, __fmul_rn(m_hat, c[6]));
        }
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
    }
}
