// cuda-emu: the cuBLAS entry points the engine calls (single-precision and mixed-precision GEMM, plain and
// strided-batched), computed on the CPU with f64 accumulation. Built as libcublas.so.12 next to the
// emulated driver. Arguments are checked as cuBLAS checks them (sizes, leading dimensions), and C is not
// read when beta is 0, as in cuBLAS, so a NaN-poisoned output shows whether the caller relies on that.

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <functional>

#include <vector>

#include "emu_kernel.h"
#include "emu_stream.h"

typedef int cublasStatus_t;
enum : int { OK = 0, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum : int { R_32F = 0, R_16F = 2, R_16BF = 14 };
// Not a cuBLAS type: f32 storage read as TF32 (10 mantissa bits, round to nearest even), the inputs of a
// product with compute type CUBLAS_COMPUTE_32F_FAST_TF32 (77), as tensor cores see them.
enum : int { R_TF32 = 1000 };
enum : int { COMPUTE_32F_FAST_TF32 = 77 };

static float to_tf32(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) { // finite: round the 13 dropped bits to nearest even
        u += 0x0fffu + ((u >> 13) & 1u);
        u &= 0xffffe000u;
    }
    memcpy(&x, &u, 4);
    return x;
}

struct Handle {
    int pointer_mode; // 0 host, 1 device: both are plain addresses here
    void *stream;     // cublasSetStream's
};

// A product is queued on the handle's stream (emu_stream.h), so it runs in order with the kernels around it,
// and counted with the driver's calls.
static void run_on(void *stream, std::function<void()> op) {
    emu_stream::note("cublas:product");
    emu_stream::run_on(stream, std::move(op));
}

static double load(int type, const void *p, long long i) {
    switch (type) {
    case R_32F: return ((const float *)p)[i];
    case R_16F: return __half2float(((const __half *)p)[i]);
    case R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case R_TF32: return to_tf32(((const float *)p)[i]);
    }
    return 0.0;
}

static void store(int type, void *p, long long i, double v) {
    switch (type) {
    case R_32F: ((float *)p)[i] = (float)v; break;
    case R_16F: ((__half *)p)[i] = __float2half_rn((float)v); break;
    case R_16BF: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v); break;
    }
}

// Column-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, `batch` times with the given strides.
// op(A) is copied row by row and op(B) column by column into f64 panels, so every entry of C is one
// contiguous dot product, accumulated in f64 and rounded once.
static void gemm_now(int ta, int tb, int m, int n, int k, float alpha, const void *a, int atype, int lda,
                     long long sa, const void *b, int btype, int ldb, long long sb, float beta, void *c, int ctype,
                     int ldc, long long sc, int batch);

// Checks the arguments now (as cuBLAS does, returning its status) and queues the product on the stream.
static cublasStatus_t gemm(void *h, int ta, int tb, int m, int n, int k, float alpha, const void *a, int atype,
                           int lda, long long sa, const void *b, int btype, int ldb, long long sb, float beta, void *c,
                           int ctype, int ldc, long long sc, int batch) {
    const auto known = [](int t) { return t == R_32F || t == R_16F || t == R_16BF; };
    const auto input = [&](int t) { return known(t) || t == R_TF32; };
    if (!input(atype) || !input(btype) || !known(ctype) || ta < 0 || ta > 1 || tb < 0 || tb > 1)
        return NOT_SUPPORTED;
    const int arows = ta ? k : m, brows = tb ? n : k;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda-emu cuBLAS: invalid gemm m=%d n=%d k=%d lda=%d ldb=%d ldc=%d transa=%d transb=%d\n",
                m, n, k, lda, ldb, ldc, ta, tb);
        return INVALID_VALUE;
    }
    if (emu_stream::no_compute()) {
        run_on(((Handle *)h)->stream, [] {});
        return OK;
    }
    run_on(((Handle *)h)->stream, [=] {
        gemm_now(ta, tb, m, n, k, alpha, a, atype, lda, sa, b, btype, ldb, sb, beta, c, ctype, ldc, sc, batch);
    });
    return OK;
}

static size_t type_bytes(int type) { return type == R_16F || type == R_16BF ? 2 : 4; }

// Tells the race check (emu_stream::access) of the column-major matrix [rows, cols] with leading dimension
// `ld` at element `offset` of `p`: one span per column, so the gaps between columns count as untouched.
static void declare(const void *p, int type, long long offset, int rows, int cols, int ld, bool write) {
    if (rows == 0 || cols == 0) return;
    const size_t es = type_bytes(type);
    for (int j = 0; j < cols; ++j)
        emu_stream::access((const char *)p + (size_t)(offset + (long long)j * ld) * es, (size_t)rows * es, write,
                           "a cuBLAS product");
}

static void gemm_now(int ta, int tb, int m, int n, int k, float alpha, const void *a, int atype, int lda,
                     long long sa, const void *b, int btype, int ldb, long long sb, float beta, void *c, int ctype,
                     int ldc, long long sc, int batch) {
    std::vector<double> pa((size_t)m * k), pb((size_t)k * n);
    for (int q = 0; q < batch; ++q) {
        const long long oa = q * sa, ob = q * sb, oc = q * sc;
        if (k > 0) {
            declare(a, atype, oa, ta ? k : m, ta ? m : k, lda, false);
            declare(b, btype, ob, tb ? n : k, tb ? k : n, ldb, false);
        }
        declare(c, ctype, oc, m, n, ldc, true);
        for (int i = 0; i < m; ++i)
            for (int l = 0; l < k; ++l)
                pa[(size_t)i * k + l] = load(atype, a, oa + (ta ? (long long)i * lda + l : (long long)l * lda + i));
        for (int j = 0; j < n; ++j)
            for (int l = 0; l < k; ++l)
                pb[(size_t)j * k + l] = load(btype, b, ob + (tb ? (long long)l * ldb + j : (long long)j * ldb + l));
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const double *x = &pa[(size_t)i * k], *y = &pb[(size_t)j * k];
                double acc = 0.0;
                for (int l = 0; l < k; ++l) acc += x[l] * y[l];
                const long long ic = oc + (long long)j * ldc + i;
                double v = (double)alpha * acc;
                if (beta != 0.0f) v += (double)beta * load(ctype, c, ic);
                store(ctype, c, ic, v);
            }
    }
}

extern "C" {

cublasStatus_t cublasCreate_v2(void **h) {
    *h = new Handle{0, nullptr};
    return OK;
}
cublasStatus_t cublasDestroy_v2(void *h) {
    delete (Handle *)h;
    return OK;
}
cublasStatus_t cublasSetStream_v2(void *h, void *stream) {
    ((Handle *)h)->stream = stream;
    return OK;
}
cublasStatus_t cublasSetPointerMode_v2(void *h, int mode) {
    ((Handle *)h)->pointer_mode = mode;
    return OK;
}
cublasStatus_t cublasGetPointerMode_v2(void *h, int *mode) {
    *mode = ((Handle *)h)->pointer_mode;
    return OK;
}
cublasStatus_t cublasSetMathMode(void *, int) { return OK; }
cublasStatus_t cublasSetWorkspace_v2(void *, void *, size_t) { return OK; }

cublasStatus_t cublasSgemm_v2(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a,
                              int lda, const float *b, int ldb, const float *beta, float *c, int ldc) {
    return gemm(h, ta, tb, m, n, k, *alpha, a, R_32F, lda, 0, b, R_32F, ldb, 0, *beta, c, R_32F, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(void *h, int ta, int tb, int m, int n, int k, const float *alpha,
                                         const float *a, int lda, long long sa, const float *b, int ldb,
                                         long long sb, const float *beta, float *c, int ldc, long long sc,
                                         int batch) {
    return gemm(h, ta, tb, m, n, k, *alpha, a, R_32F, lda, sa, b, R_32F, ldb, sb, *beta, c, R_32F, ldc, sc, batch);
}

// cuBLAS' table of type combinations for the Ex GEMMs with an f32 compute type (alpha and beta are then f32):
// CUBLAS_COMPUTE_32F / _PEDANTIC (68, 69; 0 is the pre-11 CUDA_R_32F spelling) take A = B in f32, f16 or bf16
// with C the same type or f32; the FAST kinds (74 FAST_16F, 75 FAST_16BF, 77 FAST_TF32) take f32 only. Anything else is CUBLAS_STATUS_NOT_SUPPORTED on a GPU, so here too
// (the f64-accumulating stand-in could compute any mix, and would hide a call that a GPU refuses).
static bool supported(int atype, int btype, int ctype, int compute) {
    if (atype != btype) return false;
    switch (compute) {
    case 0:
    case 68:
    case 69: return (atype == R_32F || atype == R_16F || atype == R_16BF) && (ctype == atype || ctype == R_32F);
    case 74:
    case 75:
    case 77: return atype == R_32F && ctype == R_32F;
    }
    return false;
}
static cublasStatus_t refuse(const char *call, int atype, int btype, int ctype, int compute) {
    fprintf(stderr, "cuda-emu cuBLAS: %s: types A=%d B=%d C=%d with compute type %d are not a supported combination\n",
            call, atype, btype, ctype, compute);
    return NOT_SUPPORTED;
}

// f32 inputs of a TF32 product are read as TF32.
static int tf32_input(int type, int compute) { return type == R_32F && compute == COMPUTE_32F_FAST_TF32 ? R_TF32 : type; }

cublasStatus_t cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a,
                            int atype, int lda, const void *b, int btype, int ldb, const void *beta, void *c,
                            int ctype, int ldc, int compute, int) {
    if (!supported(atype, btype, ctype, compute)) return refuse("cublasGemmEx", atype, btype, ctype, compute);
    atype = tf32_input(atype, compute);
    btype = tf32_input(btype, compute);
    return gemm(h, ta, tb, m, n, k, *(const float *)alpha, a, atype, lda, 0, b, btype, ldb, 0, *(const float *)beta,
                c, ctype, ldc, 0, 1);
}

cublasStatus_t cublasGemmStridedBatchedEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha,
                                          const void *a, int atype, int lda, long long sa, const void *b,
                                          int btype, int ldb, long long sb, const void *beta, void *c, int ctype,
                                          int ldc, long long sc, int batch, int compute, int) {
    if (!supported(atype, btype, ctype, compute))
        return refuse("cublasGemmStridedBatchedEx", atype, btype, ctype, compute);
    atype = tf32_input(atype, compute);
    btype = tf32_input(btype, compute);
    return gemm(h, ta, tb, m, n, k, *(const float *)alpha, a, atype, lda, sa, b, btype, ldb, sb,
                *(const float *)beta, c, ctype, ldc, sc, batch);
}

} // extern "C"
