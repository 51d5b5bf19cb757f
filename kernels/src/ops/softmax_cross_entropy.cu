// Fused softmax + cross-entropy (mean over the rows not ignored, optional label smoothing); the CPU twin is
// ops/softmax_cross_entropy.rs. logits, probs, dlogits: [b, v] row-major; targets: [b] (int64 class ids).
// `has_ignore` / `ignore` is the CPU's `ignore_index: Option<i64>`; keep = 1 - eps, smooth = eps (the loss),
// spc = eps / v (the gradient), all rounded to f32 on the host as the CPU rounds them.
// Under autocast the logits (and so their gradient) may be stored in half precision (T = f16 / bf16): they are
// loaded to f32 (exact), everything is computed in f32 / f64 as for f32 logits, and the gradient is rounded
// once as it is stored, as torch's is when it flows back through autocast's cast of the logits to f32.
// `scale` (may be null: 1) is the f16 loss-scale state (`[scale, ...]`, amp.rs): the gradient is multiplied
// by it in f32 before it is rounded, so small gradients survive the rounding into f16 (the point of scaling).

__device__ __forceinline__ bool sce_ignored(long long t, int has_ignore, long long ignore) {
    return has_ignore && t == ignore;
}

// probs = softmax(logits), computed as the CPU does (subtract the row max, exponentiate, multiply by the
// reciprocal of the sum): a block per row, or (_warp) a warp per row for rows of up to 1024 classes (the host
// picks, cuda/launch.rs row_launch), grid-stride over rows.
template <bool WARP, typename T> __device__ void sce_probs(float *probs, const T *logits, size_t b, size_t v, float *red) {
    const RowGroup<WARP> g;
    for (size_t r = g.first(); r < b; r += g.stride()) {
        const T *x = logits + r * v;
        float *p = probs + r * v;
        float m = -__int_as_float(0x7f800000);
        for (size_t j = g.lane(); j < v; j += g.lanes()) m = fmaxf(m, ld(x, j));
        m = WARP ? warp_max(m) : block_max(m, red);
        float s = 0.0f;
        for (size_t j = g.lane(); j < v; j += g.lanes()) {
            float e = expf(ld(x, j) - m);
            p[j] = e;
            s += e;
        }
        s = WARP ? warp_sum(s) : block_sum(s, red);
        const float inv = __fdiv_rn(1.0f, s);
        // Each thread rescales only the entries it wrote itself, so no barrier is needed before this loop.
        for (size_t j = g.lane(); j < v; j += g.lanes()) p[j] = __fmul_rn(p[j], inv);
    }
}


// The mean loss into loss[0], in ONE block (fixed summation order: the same bits every run, no float
// atomics): warp w takes rows w, w + warps, ...; each row's loss is accumulated in f64 as on the CPU.
// Without smoothing the row loss is -log p[t] read from the probabilities (one load per row); when that
// probability is too small to be accurate, and always with smoothing (which needs every logit), the row's
// log-sum-exp is recomputed from the logits. A target outside [0, v) that is not ignored makes the loss NaN.
// Every row ignored (or b == 0) gives 0, as on the CPU.
template <typename T>
__device__ void sce_loss(float *loss, const float *probs, const T *logits, const long long *targets, size_t b, size_t v,
                         int has_ignore, long long ignore, float keep, float smooth, double *part,
                         unsigned long long *cnt, int *bad) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double acc = 0.0;
    unsigned long long valid = 0;
    int bad_label = 0;
    for (size_t r = warp; r < b; r += warps) {
        const long long t = targets[r];
        if (sce_ignored(t, has_ignore, ignore)) continue; // uniform across the warp
        if (t < 0 || (unsigned long long)t >= (unsigned long long)v) {
            bad_label = 1;
            continue;
        }
        ++valid;
        const float pt = probs[r * v + (size_t)t];
        float row;
        if (smooth == 0.0f && pt > 1e-30f) {
            row = -logf(pt);
        } else {
            const T *x = logits + r * v;
            float m = -__int_as_float(0x7f800000);
            for (size_t j = lane; j < v; j += 32) m = fmaxf(m, ld(x, j));
            m = warp_max(m);
            float s = 0.0f, sx = 0.0f;
            for (size_t j = lane; j < v; j += 32) {
                s += expf(ld(x, j) - m);
                sx += ld(x, j);
            }
            s = warp_sum(s);
            sx = warp_sum(sx);
            const float lse = m + logf(s);
            const float nll = lse - ld(x, (size_t)t);
            row = smooth == 0.0f ? nll : keep * nll + smooth * (lse - sx * (1.0f / (float)v));
        }
        acc += (double)row; // identical in every lane; lane 0's copy is used
    }
    if (lane == 0) {
        part[warp] = acc;
        cnt[warp] = valid;
        bad[warp] = bad_label;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        unsigned long long n_valid = 0;
        int any_bad = 0;
        for (int w = 0; w < warps; ++w) {
            total += part[w];
            n_valid += cnt[w];
            any_bad |= bad[w];
        }
        float out = n_valid == 0 ? 0.0f : (float)(total / (double)n_valid);
        loss[0] = any_bad ? __int_as_float(0x7fc00000) : out;
    }
}

// dlogits = (p - spc) * scale with keep * scale subtracted at the target, scale = dloss / n_valid, then times
// the loss scale; ignored rows get 0. The same f32 operations as the CPU in the same order (_rn: no contraction), so equal
// probabilities give equal bits. With an ignore index every block first counts the valid rows itself (a
// pass over the targets, which stay in L2) so no host synchronisation or scratch buffer is needed;
// otherwise n_valid = b is passed in. One block per row, grid-stride over rows.
template <typename T>
__device__ void sce_backward(T *dlogits, const float *probs, const long long *targets, size_t b, size_t v, int has_ignore,
                             long long ignore, float keep, float spc, float dloss, const double *loss_scale, float *red) {
    const float ls = loss_scale ? (float)loss_scale[0] : 1.0f;
    unsigned long long n_valid = b;
    if (has_ignore) {
        float c = 0.0f; // per-thread counts are small integers, exact in f32 up to 2^24 rows per thread
        for (size_t r = threadIdx.x; r < b; r += blockDim.x) c += targets[r] == ignore ? 0.0f : 1.0f;
        n_valid = (unsigned long long)(block_sum(c, red) + 0.5f);
    }
    const float scale = n_valid == 0 ? 0.0f : __fdiv_rn(dloss, (float)n_valid);
    for (size_t r = blockIdx.x; r < b; r += gridDim.x) {
        const long long t = targets[r];
        T *d = dlogits + r * v;
        const float *p = probs + r * v;
        if (n_valid == 0 || sce_ignored(t, has_ignore, ignore)) {
            for (size_t j = threadIdx.x; j < v; j += blockDim.x) st(d, j, 0.0f);
            continue;
        }
        const bool ok = t >= 0 && (unsigned long long)t < (unsigned long long)v;
        for (size_t j = threadIdx.x; j < v; j += blockDim.x) {
            float g = __fmul_rn(__fsub_rn(p[j], spc), scale);
            if (!ok) g = __int_as_float(0x7fc00000); // a bad target (the forward reported it): NaN row
            else if (j == (size_t)t) g = __fsub_rn(g, __fmul_rn(keep, scale));
            st(d, j, __fmul_rn(g, ls));
        }
    }
}

#define SCE(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sce_probs_##S(float *probs, const T *logits, size_t b, size_t v) { \
        __shared__ float red[32]; \
        sce_probs<false>(probs, logits, b, v, red); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sce_probs_warp_##S(float *probs, const T *logits, size_t b, size_t v) { \
        sce_probs<true>(probs, logits, b, v, nullptr); \
    } \
    extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) sce_loss_##S(float *loss, const float *probs, const T *logits, const long long *targets, size_t b, size_t v, int has_ignore, long long ignore, float keep, float smooth) { \
        __shared__ double part[32]; \
        __shared__ unsigned long long cnt[32]; \
        __shared__ int bad[32]; \
        sce_loss(loss, probs, logits, targets, b, v, has_ignore, ignore, keep, smooth, part, cnt, bad); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sce_backward_##S(T *dlogits, const float *probs, const long long *targets, size_t b, size_t v, int has_ignore, long long ignore, float keep, float spc, float dloss, const double *loss_scale) { \
        __shared__ float red[32]; \
        sce_backward(dlogits, probs, targets, b, v, has_ignore, ignore, keep, spc, dloss, loss_scale, red); \
    }
SCE(float, f32)
SCE(f16, f16)
SCE(bf16, bf16)
