// RMSprop (plain or centered, with optional momentum) over a whole arena in one launch; the CPU twin is
// optim/rmsprop.rs (torch.optim.RMSprop's single-tensor order). _rn intrinsics: no FMA contraction.
//
// p, g, sq (square_avg), ga (grad_avg, centered segments only), buf (momentum segments only): [n].
// Segment coefficients: c0 weight_decay, c1 alpha, c2 1 - alpha, c3 lerp coefficient (of 1 - alpha),
// c4 eps, c5 momentum, c6 -lr.
// Flags: 1 weight decay, 2 centered, 4 momentum, 8 lerp from start (else from end).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) rmsprop_step_f32(float *p, const float *g, float *sq, float *ga, float *buf,
                                            const Segment *segs, int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        const unsigned f = s->flags;
        float pi = p[i], gi = g[i];
        if (f & 1) gi = __fadd_rn(gi, __fmul_rn(c[0], pi));
        float sqi = __fadd_rn(__fmul_rn(sq[i], c[1]), __fmul_rn(__fmul_rn(c[2], gi), gi));
        sq[i] = sqi;
        float avg;
        if (f & 2) {
            float gai = ga[i];
            float base = (f & 8) ? gai : gi;
            gai = __fadd_rn(base, __fmul_rn(c[3], __fsub_rn(gi, gai)));
            ga[i] = gai;
            // square_avg.addcmul(ga, ga, value=-1): the CPU writes sq + (-ga) * ga.
            avg = __fadd_rn(__fsqrt_rn(__fadd_rn(sqi, __fmul_rn(-gai, gai))), c[4]);
        } else {
            avg = __fadd_rn(__fsqrt_rn(sqi), c[4]);
        }
        if (f & 4) {
            float b = __fadd_rn(__fmul_rn(buf[i], c[5]), __fdiv_rn(gi, avg));
            buf[i] = b;
            pi = __fadd_rn(pi, __fmul_rn(c[6], b));
        } else {
            pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[6], gi), avg));
        }
        p[i] = pi;
    }
}
