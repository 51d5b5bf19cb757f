// cuda-emu's cuBLAS stand-in (cublas.cpp), tested alone: the type combinations cuBLAS supports compute, and
// the ones a GPU refuses are refused (CUBLAS_STATUS_NOT_SUPPORTED). Without the emulated driver loaded, a
// product runs at the call. Built and run by selftest.sh.

#include <stdio.h>

#include "emu_kernel.h"

extern "C" {
int cublasCreate_v2(void **h);
int cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a, int atype, int lda,
                 const void *b, int btype, int ldb, const void *beta, void *c, int ctype, int ldc, int compute,
                 int algo);
}

enum { R_32F = 0, R_16F = 2, R_16BF = 14, COMPUTE_32F = 68, FAST_TF32 = 77, NOT_SUPPORTED = 15 };

static int failures = 0;
static void check(bool ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    void *h = nullptr;
    cublasCreate_v2(&h);
    const float one = 1.0f, zero = 0.0f;
    // 1x1 products: c = a * b.
    const float af = 1.0f + 1.0f / 4096.0f, bf = 3.0f; // af needs 13 mantissa bits: TF32 rounds it to 1
    const __half ah = __float2half(1.5f), bh = __float2half(2.0f);
    const __nv_bfloat16 ab = __float2bfloat16(1.5f), bb = __float2bfloat16(2.0f);
    float c = -1.0f;
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &af, R_32F, 1, &bf, R_32F, 1, &zero, &c, R_32F, 1, COMPUTE_32F, 0) ==
                  0 &&
              c == af * bf,
          "f32 x f32 -> f32 (COMPUTE_32F) is exact f32");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &af, R_32F, 1, &bf, R_32F, 1, &zero, &c, R_32F, 1, FAST_TF32, 0) == 0 &&
              c == 3.0f,
          "f32 x f32 -> f32 (FAST_TF32) rounds the inputs to TF32");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &ah, R_16F, 1, &bh, R_16F, 1, &zero, &c, R_32F, 1, COMPUTE_32F, 0) == 0 &&
              c == 3.0f,
          "f16 x f16 -> f32 (COMPUTE_32F)");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &ab, R_16BF, 1, &bb, R_16BF, 1, &zero, &c, R_32F, 1, COMPUTE_32F, 0) ==
                  0 &&
              c == 3.0f,
          "bf16 x bf16 -> f32 (COMPUTE_32F)");
    __half ch = __float2half(0.0f);
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &ah, R_16F, 1, &bh, R_16F, 1, &zero, &ch, R_16F, 1, COMPUTE_32F, 0) ==
                  0 &&
              __half2float(ch) == 3.0f,
          "f16 x f16 -> f16 (COMPUTE_32F)");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &ah, R_16F, 1, &bb, R_16BF, 1, &zero, &c, R_32F, 1, COMPUTE_32F, 0) ==
              NOT_SUPPORTED,
          "f16 x bf16 is refused");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &af, R_32F, 1, &bf, R_32F, 1, &zero, &ch, R_16F, 1, COMPUTE_32F, 0) ==
              NOT_SUPPORTED,
          "f32 inputs with an f16 output are refused");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &ah, R_16F, 1, &bh, R_16F, 1, &zero, &c, R_32F, 1, FAST_TF32, 0) ==
              NOT_SUPPORTED,
          "f16 inputs with FAST_TF32 are refused");
    check(cublasGemmEx(h, 0, 0, 1, 1, 1, &one, &af, R_32F, 1, &bf, R_32F, 1, &zero, &c, R_32F, 1, 76, 0) ==
              NOT_SUPPORTED,
          "a compute type that is not cuBLAS' is refused");
    printf("%s\n", failures ? "cuda-emu cuBLAS selftest FAILED" : "cuda-emu cuBLAS selftest passed");
    return failures ? 1 : 0;
}
