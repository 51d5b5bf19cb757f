// SGD with momentum, dampening, Nesterov and coupled weight decay over a whole arena in one launch; the CPU
// twin is optim/sgd.rs (torch.optim.SGD's single-tensor order). Products and sums use the _rn intrinsics so
// NVRTC does not contract them into FMAs: the device update rounds as the CPU update does.
//
// p, g, buf: [n] (buf only touched by momentum segments); segs: [nsegs] sorted.
// Segment coefficients: c0 -lr, c1 weight_decay, c2 momentum, c3 1 - dampening.
// Flags: 1 weight decay, 2 momentum buffer, 4 first step (the buffer starts as the gradient), 8 nesterov.

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sgd_step_f32(float *p, const float *g, float *buf, const Segment *segs, int nsegs,
                                        size_t n) {
    FOR_EACH(i, n) {
        const Segment *s = find_segment(segs, nsegs, i);
        if (s == nullptr) continue;
        const float *c = s->c;
        const unsigned f = s->flags;
        float pi = p[i], gi = g[i];
        if (f & 1) gi = __fadd_rn(gi, __fmul_rn(c[1], pi));
        if (f & 2) {
            // buf.mul_(momentum).add_(g, alpha=1 - dampening): the product is rounded before the add.
            float b = (f & 4) ? gi : __fadd_rn(__fmul_rn(buf[i], c[2]), __fmul_rn(c[3], gi));
            buf[i] = b;
            gi = (f & 8) ? __fadd_rn(gi, __fmul_rn(c[2], b)) : b;
        }
        p[i] = __fadd_rn(pi, __fmul_rn(c[0], gi));
    }
}
