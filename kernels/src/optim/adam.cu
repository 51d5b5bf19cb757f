// Adam / AdamW / AMSGrad over a whole arena in one launch; the CPU twin is optim/adam.rs (its per-element
// order, as torch.optim.Adam's single-tensor path). Products and sums use the _rn intrinsics so NVRTC does
// not contract them into FMAs: the device update rounds as the CPU update does.
//
// p, g, m, v, vmax: [n] (vmax only read with AMSGrad); segs: [nsegs] sorted.
// Segment coefficients: c0 decay (1 - lr*wd), c1 weight_decay, c2 lerp coefficient, c3 beta2,
// c4 1 - beta2, c5 sqrt(bias_correction2), c6 eps, c7 -step_size.
// Flags: 1 coupled decay (Adam), 2 decoupled decay (AdamW), 4 AMSGrad, 8 lerp from start (else from end).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adam_step_f32(float *p, const float *g, float *m, float *v, float *vmax,
                                         const Segment *segs, int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        float pi = p[i], gi = g[i];
        if (s->flags & 2) pi = __fmul_rn(pi, c[0]);
        if (s->flags & 1) gi = __fadd_rn(gi, __fmul_rn(c[1], pi));
        float mi = m[i];
        // torch.lerp(m, g, w): from the start when w < 0.5, else from the end (c2 = w - 1).
        float base = (s->flags & 8) ? mi : gi;
        mi = __fadd_rn(base, __fmul_rn(c[2], __fsub_rn(gi, mi)));
        float vi = __fadd_rn(__fmul_rn(v[i], c[3]), __fmul_rn(__fmul_rn(c[4], gi), gi));
        float vn = vi;
        if (s->flags & 4) {
            float vm = vmax[i];
            vm = (isnan(vm) || vm > vi) ? vm : vi; // torch.maximum keeps NaN
            vmax[i] = vm;
            vn = vm;
        }
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vn), c[5]), c[6]);
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(c[7], mi), denom));
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
    }
}
