// Adadelta over a whole arena in one launch; the CPU twin is optim/adadelta.rs (torch.optim.Adadelta's
// single-tensor order). _rn intrinsics: no FMA contraction, the CPU's rounding.
//
// p, g, sq (square_avg), acc (acc_delta): [n]; segs: [nsegs] sorted.
// Segment coefficients: c0 weight_decay, c1 rho, c2 1 - rho, c3 eps, c4 -lr. Flags: 1 weight decay.

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adadelta_step_f32(float *p, const float *g, float *sq, float *acc,
                                             const Segment *segs, int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        float pi = p[i], gi = g[i];
        if (s->flags & 1) gi = __fadd_rn(gi, __fmul_rn(c[0], pi));
        float sqi = __fadd_rn(__fmul_rn(sq[i], c[1]), __fmul_rn(__fmul_rn(c[2], gi), gi));
        float std = __fsqrt_rn(__fadd_rn(sqi, c[3]));
        float ai = acc[i];
        float delta = __fmul_rn(__fdiv_rn(__fsqrt_rn(__fadd_rn(ai, c[3])), std), gi);
        acc[i] = __fadd_rn(__fmul_rn(ai, c[1]), __fmul_rn(__fmul_rn(c[2], delta), delta));
        p[i] = __fadd_rn(pi, __fmul_rn(c[4], delta));
        sq[i] = sqi;
    }
}
