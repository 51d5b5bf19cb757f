//! Winograd F(2x2, 3x3) for the 3x3, stride-1 convolutions that dominate CNN and ResNet training (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): every 2x2 block of outputs is computed
//! from a 4x4 input tile with 16 multiplies per (input, output) channel pair instead of 36, so the products
//! do 2.25x fewer multiply-adds than im2col + gemm.
//!
//! For one sample (C input channels, OC output channels, T = ceil(OH/2) * ceil(OW/2) tiles):
//! - weights: `U[xi, c, oc] = (G g G^T)[xi]` for `g = weight[oc, c]` (3x3), once per pass;
//! - input:   `V[xi, t, c] = (B^T d B)[xi]` for the 4x4 tile `d` of channel `c` at tile `t`;
//! - product: `M[xi, t, oc] = sum_c V[xi, t, c] * U[xi, c, oc]`, 16 independent products (`xi` = 0..16);
//! - output:  `out[oc, 2x2 block t] = bias[oc] + (A^T M[., t, oc] A)`.
//!
//! The input gradient of a stride-1 convolution is itself a stride-1 convolution of the output gradient (with
//! the kernel flipped, input and output channels swapped, and padding `2 - pad`), so [`forward_sample`] also
//! computes it ([`transform_weights`] with `flip`). The weight gradient is `dU[xi] = sum_t V[xi, t, .]^T dM[xi, t, .]`
//! with `dM = A dY A^T` ([`weight_grad_sample`], summed over a slot's samples), then `dW = G^T dU G`
//! ([`add_weight_grad`]). On AVX-512 the products use 16-lane registers, with the same per-output chain of
//! fused multiply-adds, so the bits do not depend on the instruction set.
//!
//! Layouts keep the vectorised axis contiguous: channels run innermost in `V` and `M`, so the transforms
//! work on 8 channels per AVX2 register and the product is a 16-channel x 6-tile register block (the shape of
//! the gemm crate's own AVX2 kernel) with `U` as its packed operand. The input is first copied into a
//! zero-padded, channel-last tile grid so every tile load is one contiguous vector.
//!
//! Used for f32 on CPUs with AVX2 and FMA when C and OC are multiples of 8 (see [`eligible`]); results differ
//! from im2col in the last bits (different summation order and transforms), and are deterministic: every
//! sample is computed the same way on any thread count.

/// Lanes of one AVX2 register of f32.
const L: usize = 8;
/// Lanes of one AVX-512 register of f32.
const L16: usize = 16;
/// Tiles per register block of the product.
const NJ: usize = 6;

/// Whether a convolution takes this path: 3x3 kernel, stride 1, no dilation, one group, C and OC multiples of
/// 8, padding at most 2 (so the input gradient's padding `2 - pad` is not negative), on a CPU with AVX2 + FMA.
pub(super) fn eligible(g: &super::Conv2dGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == (1, 1)
        && g.dilation == (1, 1)
        && g.groups == 1
        && g.c.is_multiple_of(L)
        && g.oc.is_multiple_of(L)
        && g.padding.0 <= 2
        && g.padding.1 <= 2
        && cpu_ok()
}

fn cpu_ok() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One Winograd convolution of a single sample: `cin` input channels of `h x w`, `cout` output channels of
/// `oh x ow`, zero padding `pad` (rows, columns).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub pad: (usize, usize),
    pub oh: usize,
    pub ow: usize,
}

impl Shape {
    fn tiles_hw(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// Rows and columns of the padded, channel-last input grid: two per tile plus the 2-element overlap.
    fn grid_hw(&self) -> (usize, usize) {
        let (th, tw) = self.tiles_hw();
        (2 * th + 2, 2 * tw + 2)
    }

    /// Workspace one sample needs: `V` [16, T, Cin], `M` [16, T, Cout] and the padded input grid.
    pub fn workspace_len(&self) -> usize {
        let (th, tw) = self.tiles_hw();
        let (gh, gw) = self.grid_hw();
        16 * th * tw * (self.cin + self.cout) + gh * gw * self.cin
    }
}

impl Shape {
    /// Workspace [`weight_grad_sample`] needs: `V` [16, T, Cin], `dM` [16, T, Cout], then the padded input grid
    /// or (after the input transform) the output gradient's channel-last grid, whichever is longer.
    pub fn wgrad_workspace_len(&self) -> usize {
        let (th, tw) = self.tiles_hw();
        let (gh, gw) = self.grid_hw();
        16 * th * tw * (self.cin + self.cout) + (gh * gw * self.cin).max(4 * th * tw * self.cout)
    }
}

/// Length of the transformed weights `U` [16, Cin, Cout].
pub(super) fn u_len(cin: usize, cout: usize) -> usize {
    16 * cin * cout
}

/// `U[xi, ci, co] = (G g G^T)[xi]`, computed in f64 and rounded once, with `g = weight[co, ci]` (3x3), or with
/// `flip` (for the input gradient: `cin` = the layer's OC, `cout` = its C) `g = weight[ci, co]` rotated by 180
/// degrees. weight: [OC, C, 3, 3] of the layer; u: [16, cin, cout].
pub(super) fn transform_weights(u: &mut [f32], weight: &[f32], cin: usize, cout: usize, flip: bool) {
    assert_eq!(u.len(), u_len(cin, cout));
    assert_eq!(weight.len(), cin * cout * 9);
    for ci in 0..cin {
        for co in 0..cout {
            let mut g = [[0f64; 3]; 3];
            for (ki, row) in g.iter_mut().enumerate() {
                for (kj, v) in row.iter_mut().enumerate() {
                    *v = if flip {
                        weight[(ci * cout + co) * 9 + (2 - ki) * 3 + (2 - kj)] as f64
                    } else {
                        weight[(co * cin + ci) * 9 + ki * 3 + kj] as f64
                    };
                }
            }
            // G g (4x3), then (G g) G^T (4x4); G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]].
            let gt = |a: [f64; 3]| [a[0], 0.5 * (a[0] + a[1] + a[2]), 0.5 * (a[0] - a[1] + a[2]), a[2]];
            let cols: [[f64; 4]; 3] =
                [gt([g[0][0], g[1][0], g[2][0]]), gt([g[0][1], g[1][1], g[2][1]]), gt([g[0][2], g[1][2], g[2][2]])];
            for i in 0..4 {
                let r = gt([cols[0][i], cols[1][i], cols[2][i]]);
                for (j, &v) in r.iter().enumerate() {
                    u[((i * 4 + j) * cin + ci) * cout + co] = v as f32;
                }
            }
        }
    }
}

/// One sample: `out[co, oy, ox] = bias[co] + sum_{ci, ki, kj} g[co, ci, ki, kj] * x[ci, oy + ki - pad_h,
/// ox + kj - pad_w]` (zero outside the input), with the weights given as `U` ([`transform_weights`]).
///
/// out: [cout, oh, ow] (overwritten), x: [cin, h, w], u: [16, cin, cout], bias: [cout] or None,
/// ws: at least [`Shape::workspace_len`] (clobbered). Panics unless the CPU has AVX2 + FMA, the channel counts
/// are multiples of 8 and `oh = h + 2 pad_h - 2` (same for w).
pub(super) fn forward_sample(out: &mut [f32], x: &[f32], u: &[f32], bias: Option<&[f32]>, ws: &mut [f32], s: &Shape) {
    check(x, u, bias, ws, s);
    assert_eq!(out.len(), s.cout * s.oh * s.ow);
    // SAFETY: AVX2 and FMA are present (`check`); every length was checked.
    unsafe { forward_avx2(out, x, u, bias, ws, s) }
}

/// [`forward_sample`] followed by a 2x2 / stride-2 max pool of its output (the fused convolution + pool):
/// every Winograd tile is one pool window, so the pooled value and its argmax come straight out of the output
/// transform and the full-resolution output is never stored. The compare tree is the pool's own
/// (`pool_2x2_avx2`: `b > a`, `d > c`, then `lower > upper`, strict), so the result is bitwise
/// [`forward_sample`] then `max_pool2d_forward`.
///
/// out, argmax: [cout, oh/2, ow/2] (argmax: flat index `oy*ow + ox` in the output plane); other arguments as
/// in [`forward_sample`]; `oh` and `ow` must be even. Returns false, with `out` / `argmax` unspecified, when a
/// window holds a NaN: the caller then runs the unfused pair, where a NaN wins as in PyTorch.
pub(super) fn forward_sample_pooled(
    out: &mut [f32],
    argmax: &mut [u32],
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    ws: &mut [f32],
    s: &Shape,
) -> bool {
    check(x, u, bias, ws, s);
    assert!(s.oh.is_multiple_of(2) && s.ow.is_multiple_of(2), "winograd: pooled output needs even sizes");
    assert_eq!(out.len(), s.cout * s.oh * s.ow / 4);
    assert_eq!(argmax.len(), out.len());
    assert!(s.oh * s.ow <= i32::MAX as usize);
    // SAFETY: AVX2 and FMA are present and every length was checked (`check`).
    unsafe {
        let m = products(x, u, ws, s);
        output_transform_pooled(out, argmax, m, bias, s)
    }
}

/// The weight gradient of one sample in the Winograd domain:
/// `du[xi, c, co] (+)= sum_t V[xi, t, c] * dM[xi, t, co]`, with `V` the input transform of `x` (as in the
/// forward) and `dM = A dY A^T` the transform of the output gradient's 2x2 block at tile `t` (0 past the
/// output's edge). Summed over the samples, [`add_weight_grad`] turns it into the 3x3 gradient.
///
/// du: [16, cin, cout] (overwritten, or added onto with `accumulate`), go: [cout, oh, ow], x: [cin, h, w],
/// ws: at least [`Shape::wgrad_workspace_len`] (clobbered). Same requirements as [`forward_sample`].
pub(super) fn weight_grad_sample(du: &mut [f32], go: &[f32], x: &[f32], ws: &mut [f32], s: &Shape, accumulate: bool) {
    check(x, du, None, &ws[..ws.len().min(s.workspace_len())], s);
    assert!(ws.len() >= s.wgrad_workspace_len(), "winograd: weight-gradient workspace too small");
    assert_eq!(go.len(), s.cout * s.oh * s.ow);
    // SAFETY: AVX2 and FMA are present (`check`); every length was checked.
    unsafe { weight_grad_avx2(du, go, x, ws, s, accumulate) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2(du: &mut [f32], go: &[f32], x: &[f32], ws: &mut [f32], s: &Shape, accumulate: bool) {
    let (th, tw) = s.tiles_hw();
    let t = th * tw;
    let (gh, gw) = s.grid_hw();
    let (v, rest) = ws.split_at_mut(16 * t * s.cin);
    let (dm, rest) = rest.split_at_mut(16 * t * s.cout);
    fill_grid(&mut rest[..gh * gw * s.cin], x, s, gw);
    input_transform(v, &rest[..gh * gw * s.cin], s, th, tw, gw);
    // The output gradient, channel-last on a 2*th x 2*tw grid (zero past an odd edge), over the input grid.
    let ygrid = &mut rest[..4 * t * s.cout];
    let ys = Shape { cin: s.cout, cout: s.cout, h: s.oh, w: s.ow, pad: (0, 0), oh: s.oh, ow: s.ow };
    fill_grid(ygrid, go, &ys, 2 * tw);
    output_grad_transform(dm, ygrid, s.cout, th, tw);
    for xi in 0..16 {
        product(
            &mut du[xi * s.cin * s.cout..(xi + 1) * s.cin * s.cout],
            &dm[xi * t * s.cout..(xi + 1) * t * s.cout],
            &v[xi * t * s.cin..(xi + 1) * t * s.cin],
            Prod { rows: s.cin, k: t, cout: s.cout, b_js: 1, b_ks: s.cin, acc: accumulate },
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn weight_grad_avx2(_: &mut [f32], _: &[f32], _: &[f32], _: &mut [f32], _: &Shape, _: bool) {
    unreachable!("winograd: eligible() is false off x86_64")
}

/// `dM[xi, t, c] = (A dY A^T)[xi]` for the 2x2 output-gradient block `dY` of every tile `t`, eight channels
/// per step, from the channel-last grid `y` ([2*th, 2*tw, c]). A = [[1,0],[1,1],[1,-1],[0,-1]] (the
/// transpose of the forward's A^T), applied down the columns and then along the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_grad_transform(dm: &mut [f32], y: &[f32], c: usize, th: usize, tw: usize) {
    let (t, gw) = (th * tw, 2 * tw);
    debug_assert!(dm.len() >= 16 * t * c && y.len() >= 4 * t * c);
    let (yp, dp) = (y.as_ptr(), dm.as_mut_ptr());
    let zero = _mm256_setzero_ps();
    for ty in 0..th {
        for tx in 0..tw {
            let tile = ty * tw + tx;
            for c0 in (0..c).step_by(L) {
                let base = yp.add((2 * ty * gw + 2 * tx) * c + c0);
                let (y00, y01) = (_mm256_loadu_ps(base), _mm256_loadu_ps(base.add(c)));
                let (y10, y11) = (_mm256_loadu_ps(base.add(gw * c)), _mm256_loadu_ps(base.add(gw * c + c)));
                // r[i] = (A dY)[i, 0..2]
                let r = [
                    [y00, y01],
                    [_mm256_add_ps(y00, y10), _mm256_add_ps(y01, y11)],
                    [_mm256_sub_ps(y00, y10), _mm256_sub_ps(y01, y11)],
                    [_mm256_sub_ps(zero, y10), _mm256_sub_ps(zero, y11)],
                ];
                for (i, [a, b]) in r.into_iter().enumerate() {
                    let out = |j: usize| dp.add(((i * 4 + j) * t + tile) * c + c0);
                    _mm256_storeu_ps(out(0), a);
                    _mm256_storeu_ps(out(1), _mm256_add_ps(a, b));
                    _mm256_storeu_ps(out(2), _mm256_sub_ps(a, b));
                    _mm256_storeu_ps(out(3), _mm256_sub_ps(zero, b));
                }
            }
        }
    }
}

/// `dw[co, ci] += G^T dU[., ci, co] G` (in f64, rounded once per element): the 3x3 weight gradient from the
/// Winograd-domain one of [`weight_grad_sample`] (summed over samples). dw: [cout, cin, 3, 3] (the layer's
/// weight layout), du: [16, cin, cout].
pub(super) fn add_weight_grad(dw: &mut [f32], du: &[f32], cin: usize, cout: usize) {
    assert_eq!(du.len(), u_len(cin, cout));
    assert_eq!(dw.len(), cin * cout * 9);
    // v G for a row v of 4: G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]].
    let g = |v: [f64; 4]| [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]];
    for ci in 0..cin {
        for co in 0..cout {
            let at = |xi: usize| du[(xi * cin + ci) * cout + co] as f64;
            // Rows: (dU G)[i, 0..3]; then columns: G^T (dU G).
            let rows: [[f64; 3]; 4] =
                std::array::from_fn(|i| g([at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3)]));
            for b in 0..3 {
                let col = g([rows[0][b], rows[1][b], rows[2][b], rows[3][b]]);
                for (a, &v) in col.iter().enumerate() {
                    let d = &mut dw[(co * cin + ci) * 9 + a * 3 + b];
                    *d = (*d as f64 + v) as f32;
                }
            }
        }
    }
}

/// The checks every entry point shares.
fn check(x: &[f32], u: &[f32], bias: Option<&[f32]>, ws: &[f32], s: &Shape) {
    assert!(cpu_ok(), "winograd: needs AVX2 + FMA");
    assert!(s.cin.is_multiple_of(L) && s.cout.is_multiple_of(L), "winograd: channels must be multiples of 8");
    assert_eq!(s.oh + 2, s.h + 2 * s.pad.0, "winograd: output height");
    assert_eq!(s.ow + 2, s.w + 2 * s.pad.1, "winograd: output width");
    assert_eq!(x.len(), s.cin * s.h * s.w);
    assert_eq!(u.len(), u_len(s.cin, s.cout));
    if let Some(b) = bias {
        assert_eq!(b.len(), s.cout);
    }
    assert!(ws.len() >= s.workspace_len(), "winograd: workspace too small");
}

#[cfg(target_arch = "x86_64")]
unsafe fn forward_avx2(out: &mut [f32], x: &[f32], u: &[f32], bias: Option<&[f32]>, ws: &mut [f32], s: &Shape) {
    let m = products(x, u, ws, s);
    output_transform(out, m, bias, s);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_avx2(_: &mut [f32], _: &[f32], _: &[f32], _: Option<&[f32]>, _: &mut [f32], _: &Shape) {
    unreachable!("winograd: eligible() is false off x86_64")
}

/// Input grid, input transform and the 16 products: returns `M` [16, T, cout] (inside `ws`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn products<'a>(x: &[f32], u: &[f32], ws: &'a mut [f32], s: &Shape) -> &'a [f32] {
    let (th, tw) = s.tiles_hw();
    let t = th * tw;
    let (gh, gw) = s.grid_hw();
    let (v, rest) = ws.split_at_mut(16 * t * s.cin);
    let (m, rest) = rest.split_at_mut(16 * t * s.cout);
    let grid = &mut rest[..gh * gw * s.cin];
    fill_grid(grid, x, s, gw);
    input_transform(v, grid, s, th, tw, gw);
    for xi in 0..16 {
        product(
            &mut m[xi * t * s.cout..(xi + 1) * t * s.cout],
            &u[xi * s.cin * s.cout..(xi + 1) * s.cin * s.cout],
            &v[xi * t * s.cin..(xi + 1) * t * s.cin],
            Prod::forward(t, s.cin, s.cout),
        );
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn products<'a>(_: &[f32], _: &[f32], _: &'a mut [f32], _: &Shape) -> &'a [f32] {
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Transposes an 8x8 block: `rows[i]` lane `j` becomes lane `i` of the result's row `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// The zero-padded, channel-last copy of the input: `grid[(gy * gw + gx) * cin + c] = x[c, gy - pad_h,
/// gx - pad_w]`, 0 outside the input. Eight channels by eight columns per 8x8 register transpose (the last
/// block of a row overlaps the one before it and rewrites the same values); rows narrower than 8 go scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_grid(grid: &mut [f32], x: &[f32], s: &Shape, gw: usize) {
    grid.fill(0.0);
    let (ph, pw) = s.pad;
    let (hw, c) = (s.h * s.w, s.cin);
    let (xp, gp) = (x.as_ptr(), grid.as_mut_ptr());
    for c0 in (0..c).step_by(L) {
        for iy in 0..s.h {
            let src = xp.add(c0 * hw + iy * s.w);
            let dst = gp.add(((iy + ph) * gw + pw) * c + c0);
            if s.w < L {
                for ix in 0..s.w {
                    for l in 0..L {
                        *dst.add(ix * c + l) = *src.add(l * hw + ix);
                    }
                }
                continue;
            }
            let mut ix = 0;
            loop {
                let rows: [__m256; 8] = std::array::from_fn(|l| _mm256_loadu_ps(src.add(l * hw + ix)));
                for (k, col) in transpose8(rows).iter().enumerate() {
                    _mm256_storeu_ps(dst.add((ix + k) * c), *col);
                }
                if ix + L == s.w {
                    break;
                }
                ix = (ix + L).min(s.w - L);
            }
        }
    }
}

/// `V[xi, t, c] = (B^T d B)[xi]` for every tile `t` and channel `c`, eight channels per step.
/// B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], applied along each tile row and then down the columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform(v: &mut [f32], grid: &[f32], s: &Shape, th: usize, tw: usize, gw: usize) {
    let (c, t) = (s.cin, th * tw);
    let (gp, vp) = (grid.as_ptr(), v.as_mut_ptr());
    for ty in 0..th {
        for tx in 0..tw {
            let tile = ty * tw + tx;
            for c0 in (0..c).step_by(L) {
                let mut r = [[_mm256_setzero_ps(); 4]; 4];
                for (i, ri) in r.iter_mut().enumerate() {
                    let base = gp.add(((2 * ty + i) * gw + 2 * tx) * c + c0);
                    let (d0, d1, d2, d3) = (
                        _mm256_loadu_ps(base),
                        _mm256_loadu_ps(base.add(c)),
                        _mm256_loadu_ps(base.add(2 * c)),
                        _mm256_loadu_ps(base.add(3 * c)),
                    );
                    *ri = [_mm256_sub_ps(d0, d2), _mm256_add_ps(d1, d2), _mm256_sub_ps(d2, d1), _mm256_sub_ps(d1, d3)];
                }
                let out = |xi: usize| vp.add((xi * t + tile) * c + c0);
                let [r0, r1, r2, r3] = r;
                for j in 0..4 {
                    _mm256_storeu_ps(out(j), _mm256_sub_ps(r0[j], r2[j]));
                    _mm256_storeu_ps(out(4 + j), _mm256_add_ps(r1[j], r2[j]));
                    _mm256_storeu_ps(out(8 + j), _mm256_sub_ps(r2[j], r1[j]));
                    _mm256_storeu_ps(out(12 + j), _mm256_sub_ps(r1[j], r3[j]));
                }
            }
        }
    }
}

/// The four outputs of one tile for eight channels, `[y00, y01, y10, y11]` (row-major in the 2x2 block):
/// `bias + A^T M A` with A^T = [[1,1,1,0],[0,1,-1,-1]] (down the columns first, then along the rows).
/// The one formula both output transforms use, so the pooled path sees exactly the unpooled values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_outputs(m: *const f32, stride_xi: usize, b: __m256) -> [__m256; 4] {
    let at = |xi: usize| _mm256_loadu_ps(m.add(xi * stride_xi));
    let mut s0 = [_mm256_setzero_ps(); 4];
    let mut s1 = [_mm256_setzero_ps(); 4];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
        s0[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        s1[j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    let row = |s: &[__m256; 4]| {
        (
            _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), s[2]), b),
            _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s[1], s[2]), s[3]), b),
        )
    };
    let ((y00, y01), (y10, y11)) = (row(&s0), row(&s1));
    [y00, y01, y10, y11]
}

/// `out[co, 2ty + a, 2tx + b]` = the tile outputs, for the outputs inside `oh x ow`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform(out: &mut [f32], m: &[f32], bias: Option<&[f32]>, s: &Shape) {
    let (th, tw) = s.tiles_hw();
    let (oc, t, p) = (s.cout, th * tw, s.oh * s.ow);
    assert!(out.len() == oc * p && m.len() >= 16 * t * oc);
    let op = out.as_mut_ptr();
    for c0 in (0..oc).step_by(L) {
        let b = bias.map_or(_mm256_setzero_ps(), |b| _mm256_loadu_ps(b.as_ptr().add(c0)));
        for ty in 0..th {
            for tx in 0..tw {
                let y = tile_outputs(m.as_ptr().add((ty * tw + tx) * oc + c0), t * oc, b);
                let (oy, ox) = (2 * ty, 2 * tx);
                if oy + 1 < s.oh && ox + 1 < s.ow {
                    // Both rows and columns inside: per channel two 2-float stores. unpacklo/hi pair the two
                    // columns of channels (0, 1, 4, 5) / (2, 3, 6, 7).
                    for a in 0..2 {
                        let row = op.add((oy + a) * s.ow + ox);
                        let lo = _mm256_unpacklo_ps(y[2 * a], y[2 * a + 1]);
                        let hi = _mm256_unpackhi_ps(y[2 * a], y[2 * a + 1]);
                        let (lo0, lo1) = (_mm256_castps256_ps128(lo), _mm256_extractf128_ps::<1>(lo));
                        let (hi0, hi1) = (_mm256_castps256_ps128(hi), _mm256_extractf128_ps::<1>(hi));
                        let ch = |l: usize| row.add((c0 + l) * p) as *mut f64;
                        _mm_storel_pd(ch(0), _mm_castps_pd(lo0));
                        _mm_storeh_pd(ch(1), _mm_castps_pd(lo0));
                        _mm_storel_pd(ch(2), _mm_castps_pd(hi0));
                        _mm_storeh_pd(ch(3), _mm_castps_pd(hi0));
                        _mm_storel_pd(ch(4), _mm_castps_pd(lo1));
                        _mm_storeh_pd(ch(5), _mm_castps_pd(lo1));
                        _mm_storel_pd(ch(6), _mm_castps_pd(hi1));
                        _mm_storeh_pd(ch(7), _mm_castps_pd(hi1));
                    }
                    continue;
                }
                let mut lanes = [[0f32; L]; 4];
                for (k, yk) in y.iter().enumerate() {
                    _mm256_storeu_ps(lanes[k].as_mut_ptr(), *yk);
                }
                for (k, lane) in lanes.iter().enumerate() {
                    let (yy, xx) = (oy + k / 2, ox + k % 2);
                    if yy < s.oh && xx < s.ow {
                        for (l, &val) in lane.iter().enumerate() {
                            *op.add((c0 + l) * p + yy * s.ow + xx) = val;
                        }
                    }
                }
            }
        }
    }
}

/// The pooled output transform of [`forward_sample_pooled`]; returns false when a window holds a NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_pooled(out: &mut [f32], am: &mut [u32], m: &[f32], bias: Option<&[f32]>, s: &Shape) -> bool {
    let (th, tw) = s.tiles_hw();
    let (oc, t, pp) = (s.cout, th * tw, th * tw);
    assert!(out.len() == oc * pp && am.len() == oc * pp && m.len() >= 16 * t * oc);
    let mut unordered = _mm256_setzero_ps();
    let (one, below) = (_mm256_set1_epi32(1), _mm256_set1_epi32(s.ow as i32));
    // The pooled value and index of one tile for eight channels (the pool's compare tree).
    let mut pool_tile = |tile: usize, b: __m256, c0: usize| {
        let (ty, tx) = (tile / tw, tile % tw);
        let [a, bb, c, d] = tile_outputs(m.as_ptr().add(tile * oc + c0), t * oc, b);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, bb));
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(c, d));
        let ia = _mm256_set1_epi32((2 * ty * s.ow + 2 * tx) as i32);
        let ic = _mm256_add_epi32(ia, below);
        let (m01, j01) = select(_mm256_cmp_ps::<_CMP_GT_OQ>(bb, a), a, bb, ia, _mm256_add_epi32(ia, one));
        let (m23, j23) = select(_mm256_cmp_ps::<_CMP_GT_OQ>(d, c), c, d, ic, _mm256_add_epi32(ic, one));
        let (mv, jv) = select(_mm256_cmp_ps::<_CMP_GT_OQ>(m23, m01), m01, m23, j01, j23);
        (mv, _mm256_castsi256_ps(jv))
    };
    let (op, ap) = (out.as_mut_ptr(), am.as_mut_ptr() as *mut f32);
    for c0 in (0..oc).step_by(L) {
        let b = bias.map_or(_mm256_setzero_ps(), |b| _mm256_loadu_ps(b.as_ptr().add(c0)));
        if t < L {
            for tile in 0..t {
                let (mv, jv) = pool_tile(tile, b, c0);
                let (mut vals, mut idx) = ([0f32; L], [0f32; L]);
                _mm256_storeu_ps(vals.as_mut_ptr(), mv);
                _mm256_storeu_ps(idx.as_mut_ptr(), jv);
                for l in 0..L {
                    *op.add((c0 + l) * pp + tile) = vals[l];
                    *ap.add((c0 + l) * pp + tile) = idx[l];
                }
            }
            continue;
        }
        // Eight tiles at a time, transposed so every channel's eight pooled values (consecutive in its plane:
        // the pooled index is the tile index) are one store. The last block overlaps the one before it and
        // rewrites the same values.
        let mut t0 = 0;
        loop {
            let mut vals = [_mm256_setzero_ps(); L];
            let mut idx = [_mm256_setzero_ps(); L];
            for k in 0..L {
                (vals[k], idx[k]) = pool_tile(t0 + k, b, c0);
            }
            let (vals, idx) = (transpose8(vals), transpose8(idx));
            for l in 0..L {
                _mm256_storeu_ps(op.add((c0 + l) * pp + t0), vals[l]);
                _mm256_storeu_ps(ap.add((c0 + l) * pp + t0), idx[l]);
            }
            if t0 + L == t {
                break;
            }
            t0 = (t0 + L).min(t - L);
        }
    }
    _mm256_movemask_ps(unordered) == 0
}

/// `(gt ? y : x, gt ? iy : ix)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn select(gt: __m256, x: __m256, y: __m256, ix: __m256i, iy: __m256i) -> (__m256, __m256i) {
    (_mm256_blendv_ps(x, y, gt), _mm256_blendv_epi8(ix, iy, _mm256_castps_si256(gt)))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_transform_pooled(_: &mut [f32], _: &mut [u32], _: &[f32], _: Option<&[f32]>, _: &Shape) -> bool {
    unreachable!()
}

/// One of the 16 small products of a pass, as a register-blocked kernel sees it:
/// `c[j, co] (+)= sum_{kk < k} b[j * b_js + kk * b_ks] * a[kk * cout + co]` for `j < rows`, `co < cout`, with
/// `c` [rows, cout] and `a` [k, cout] row-major and `cout` a multiple of 8.
/// - forward / input gradient: `M[t, co] = sum_c V[t, c] U[c, co]`: rows = T, k = C, b = V (`b_js = C`,
///   `b_ks = 1`), overwritten;
/// - weight gradient: `dU[c, co] += sum_t V[t, c] dM[t, co]`: rows = C, k = T, b = V (`b_js = 1`,
///   `b_ks = C`), accumulated over the samples of a slot.
#[derive(Clone, Copy, Debug)]
struct Prod {
    rows: usize,
    k: usize,
    cout: usize,
    b_js: usize,
    b_ks: usize,
    /// Add onto `c` instead of overwriting it.
    acc: bool,
}

impl Prod {
    /// The forward product `M [t, cout] = V [t, k] @ U [k, cout]`.
    fn forward(t: usize, k: usize, cout: usize) -> Self {
        Prod { rows: t, k, cout, b_js: k, b_ks: 1, acc: false }
    }
}

/// Runs one product ([`Prod`]): `c` [rows, cout], `a` [k, cout], `b` as the descriptor says. AVX-512 when the
/// CPU has it (16-lane blocks), AVX2 for the rest; each output is the same chain of fused multiply-adds over
/// `kk` either way, so the result does not depend on which ran.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product(c: &mut [f32], a: &[f32], b: &[f32], p: Prod) {
    debug_assert!(c.len() >= p.rows * p.cout && a.len() >= p.k * p.cout);
    debug_assert!(p.rows == 0 || p.k == 0 || b.len() > (p.rows - 1) * p.b_js + (p.k - 1) * p.b_ks);
    let done = if avx512_ok() { product_avx512(c, a, b, p) } else { 0 };
    product_avx2_from(c, a, b, p, done);
}

/// Whether the CPU has AVX-512F, so [`product`] can use its 16-lane registers (checked once).
fn avx512_ok() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && !avx512_disabled())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `ECSTRAIN_NO_AVX512=1` keeps the products on AVX2 (to compare the two paths on one machine).
fn avx512_disabled() -> bool {
    std::env::var_os("ECSTRAIN_NO_AVX512").is_some_and(|v| v != "0")
}

/// The output channels `from..cout` of [`product`] on AVX2 registers: blocks of 16 (or a last 8) channels by 6
/// rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2_from(c: &mut [f32], a: &[f32], b: &[f32], p: Prod, from: usize) {
    let cout = p.cout;
    let mut c0 = from;
    while c0 < cout {
        let two = cout - c0 >= 2 * L;
        let mut r0 = 0;
        while r0 < p.rows {
            let nj = (p.rows - r0).min(NJ);
            let (cp, ap, bp) = (c.as_mut_ptr().add(r0 * cout + c0), a.as_ptr().add(c0), b.as_ptr().add(r0 * p.b_js));
            // SAFETY: rows r0..r0+nj of c and b, and columns c0..c0+8*NV of c and a, are in bounds (cout is a
            // multiple of 8 and `two` says whether 16 columns remain).
            macro_rules! call {
                ($($nj:literal)*) => {
                    match (nj, two) {
                        $(($nj, true) => tile::<$nj, 2>(cp, ap, bp, p),)*
                        $(($nj, false) => tile::<$nj, 1>(cp, ap, bp, p),)*
                        _ => unreachable!(),
                    }
                };
            }
            call!(1 2 3 4 5 6);
            r0 += nj;
        }
        c0 += if two { 2 * L } else { L };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn product(_: &mut [f32], _: &[f32], _: &[f32], _: Prod) {
    unreachable!()
}

/// The leading output channels of [`product`] on AVX-512 registers: blocks of 64 channels by 6 rows, then
/// 32 or 16 channels by 12 rows. Returns the channels done (a multiple of 16); the rest (at most 8) is left
/// to [`product_avx2_from`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512(c: &mut [f32], a: &[f32], b: &[f32], p: Prod) -> usize {
    let cout = p.cout;
    let mut c0 = 0;
    while cout - c0 >= L16 {
        let nv = match cout - c0 {
            r if r >= 4 * L16 => 4,
            r if r >= 2 * L16 => 2,
            _ => 1,
        };
        let nj_max = if nv == 4 { 6 } else { 12 };
        let mut r0 = 0;
        while r0 < p.rows {
            let nj = (p.rows - r0).min(nj_max);
            let (cp, ap, bp) = (c.as_mut_ptr().add(r0 * cout + c0), a.as_ptr().add(c0), b.as_ptr().add(r0 * p.b_js));
            // SAFETY: rows r0..r0+nj of c and b, and columns c0..c0+16*nv of c and a, are in bounds.
            macro_rules! call {
                ($($nj:literal)*) => {
                    match (nj, nv) {
                        $(($nj, 4) => tile512::<$nj, 4>(cp, ap, bp, p),)*
                        $(($nj, 2) => tile512::<$nj, 2>(cp, ap, bp, p),)*
                        $(($nj, _) => tile512::<$nj, 1>(cp, ap, bp, p),)*
                        _ => unreachable!(),
                    }
                };
            }
            call!(1 2 3 4 5 6 7 8 9 10 11 12);
            r0 += nj;
        }
        c0 += nv * L16;
    }
    c0
}

/// [`tile`] on AVX-512 registers: `NJ_` rows by `16 * NV` channels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile512<const NJ_: usize, const NV: usize>(c: *mut f32, a: *const f32, b: *const f32, p: Prod) {
    let mut acc = [[_mm512_setzero_ps(); NV]; NJ_];
    if p.acc {
        for (j, acc_j) in acc.iter_mut().enumerate() {
            for (vi, acc_jv) in acc_j.iter_mut().enumerate() {
                *acc_jv = _mm512_loadu_ps(c.add(j * p.cout + vi * L16));
            }
        }
    }
    for kk in 0..p.k {
        let mut av = [_mm512_setzero_ps(); NV];
        for (vi, a_v) in av.iter_mut().enumerate() {
            *a_v = _mm512_loadu_ps(a.add(kk * p.cout + vi * L16));
        }
        for (j, acc_j) in acc.iter_mut().enumerate() {
            let bv = _mm512_set1_ps(*b.add(j * p.b_js + kk * p.b_ks));
            for (acc_jv, a_v) in acc_j.iter_mut().zip(&av) {
                *acc_jv = _mm512_fmadd_ps(*a_v, bv, *acc_jv);
            }
        }
    }
    for (j, acc_j) in acc.iter().enumerate() {
        for (vi, acc_jv) in acc_j.iter().enumerate() {
            _mm512_storeu_ps(c.add(j * p.cout + vi * L16), *acc_jv);
        }
    }
}

/// Register block of [`product`]: rows `0..NJ_` by channels `0..8*NV` of `c` (the pointers are already
/// offset to the block), accumulated in registers over the whole reduction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const NJ_: usize, const NV: usize>(c: *mut f32, a: *const f32, b: *const f32, p: Prod) {
    let mut acc = [[_mm256_setzero_ps(); NV]; NJ_];
    if p.acc {
        for (j, acc_j) in acc.iter_mut().enumerate() {
            for (vi, acc_jv) in acc_j.iter_mut().enumerate() {
                *acc_jv = _mm256_loadu_ps(c.add(j * p.cout + vi * L));
            }
        }
    }
    for kk in 0..p.k {
        let mut av = [_mm256_setzero_ps(); NV];
        for (vi, a_v) in av.iter_mut().enumerate() {
            *a_v = _mm256_loadu_ps(a.add(kk * p.cout + vi * L));
        }
        for (j, acc_j) in acc.iter_mut().enumerate() {
            let bv = _mm256_broadcast_ss(&*b.add(j * p.b_js + kk * p.b_ks));
            for (acc_jv, a_v) in acc_j.iter_mut().zip(&av) {
                *acc_jv = _mm256_fmadd_ps(*a_v, bv, *acc_jv);
            }
        }
    }
    for (j, acc_j) in acc.iter().enumerate() {
        for (vi, acc_jv) in acc_j.iter().enumerate() {
            _mm256_storeu_ps(c.add(j * p.cout + vi * L), *acc_jv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Direct f64 convolution of one sample, for reference.
    fn reference(x: &[f32], w: &[f32], bias: &[f32], s: &Shape) -> Vec<f64> {
        let mut y = vec![0f64; s.cout * s.oh * s.ow];
        for co in 0..s.cout {
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut a = bias[co] as f64;
                    for ci in 0..s.cin {
                        for ki in 0..3 {
                            for kj in 0..3 {
                                let (iy, ix) =
                                    ((oy + ki) as isize - s.pad.0 as isize, (ox + kj) as isize - s.pad.1 as isize);
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                    a += w[((co * s.cin + ci) * 3 + ki) * 3 + kj] as f64
                                        * x[(ci * s.h + iy as usize) * s.w + ix as usize] as f64;
                                }
                            }
                        }
                    }
                    y[(co * s.oh + oy) * s.ow + ox] = a;
                }
            }
        }
        y
    }

    #[test]
    fn matches_a_direct_f64_convolution() {
        if !cpu_ok() {
            println!("SKIPPED winograd: this CPU has no AVX2 + FMA");
            return;
        }
        let mut rng = Rng::new(11);
        // (cin, cout, h, w, pad): even and odd sizes, padding 0 / 1 / 2 and mixed, 8- and 16-channel blocks,
        // tile counts that leave every register-block tail (1..5 tiles).
        for &(cin, cout, h, w, pad) in &[
            (32, 64, 14, 14, (1, 1)),
            (8, 8, 5, 7, (1, 1)),
            (16, 24, 9, 6, (0, 0)),
            (8, 16, 4, 4, (2, 2)),
            (24, 8, 7, 3, (1, 2)),
            (8, 40, 3, 3, (0, 1)),
            (8, 16, 10, 11, (1, 1)),
            (16, 8, 8, 8, (1, 1)),
        ] {
            let s = Shape { cin, cout, h, w, pad, oh: h + 2 * pad.0 - 2, ow: w + 2 * pad.1 - 2 };
            let x: Vec<f32> = (0..cin * h * w).map(|_| rng.normal() as f32).collect();
            let wt: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal() as f32 * 0.2).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.normal() as f32).collect();
            let mut u = vec![f32::NAN; u_len(cin, cout)];
            transform_weights(&mut u, &wt, cin, cout, false);
            let mut ws = vec![f32::NAN; s.workspace_len()];
            let mut out = vec![f32::NAN; cout * s.oh * s.ow];
            forward_sample(&mut out, &x, &u, Some(&bias), &mut ws, &s);
            let want = reference(&x, &wt, &bias, &s);
            let scale = (cin * 9) as f64;
            for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
                assert!((a as f64 - b).abs() <= 1e-6 * scale.sqrt() * (1.0 + b.abs()), "{s:?} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_a_direct_f64_one() {
        if !cpu_ok() {
            println!("SKIPPED winograd: this CPU has no AVX2 + FMA");
            return;
        }
        let mut rng = Rng::new(14);
        for &(cin, cout, h, w, pad) in &[
            (32, 64, 14, 14, (1, 1)),
            (8, 8, 5, 7, (1, 1)),
            (16, 24, 9, 6, (0, 0)),
            (8, 16, 4, 4, (2, 2)),
            (24, 8, 7, 3, (1, 2)),
            (8, 40, 3, 3, (0, 1)),
        ] {
            let s = Shape { cin, cout, h, w, pad, oh: h + 2 * pad.0 - 2, ow: w + 2 * pad.1 - 2 };
            let samples = 3;
            let xs: Vec<f32> = (0..samples * cin * h * w).map(|_| rng.normal() as f32).collect();
            let gos: Vec<f32> = (0..samples * cout * s.oh * s.ow).map(|_| rng.normal() as f32).collect();
            let init: Vec<f32> = (0..cout * cin * 9).map(|_| rng.normal() as f32).collect();
            let mut du = vec![f32::NAN; u_len(cin, cout)];
            let mut ws = vec![f32::NAN; s.wgrad_workspace_len()];
            let (xl, gl) = (cin * h * w, cout * s.oh * s.ow);
            for i in 0..samples {
                weight_grad_sample(&mut du, &gos[i * gl..(i + 1) * gl], &xs[i * xl..(i + 1) * xl], &mut ws, &s, i > 0);
            }
            let mut dw = init.clone();
            add_weight_grad(&mut dw, &du, cin, cout);
            for co in 0..cout {
                for ci in 0..cin {
                    for ki in 0..3 {
                        for kj in 0..3 {
                            let (mut want, mut mag) = (init[(co * cin + ci) * 9 + ki * 3 + kj] as f64, 0.0);
                            for i in 0..samples {
                                for oy in 0..s.oh {
                                    for ox in 0..s.ow {
                                        let (iy, ix) =
                                            ((oy + ki) as isize - pad.0 as isize, (ox + kj) as isize - pad.1 as isize);
                                        if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                            continue;
                                        }
                                        let term = gos[i * gl + (co * s.oh + oy) * s.ow + ox] as f64
                                            * xs[i * xl + (ci * h + iy as usize) * w + ix as usize] as f64;
                                        want += term;
                                        mag += term.abs();
                                    }
                                }
                            }
                            let got = dw[(co * cin + ci) * 9 + ki * 3 + kj] as f64;
                            assert!(
                                (got - want).abs() <= 4e-6 * (mag + 1.0),
                                "{s:?} dw[{co}, {ci}, {ki}, {kj}]: {got} vs {want} (sum of |terms| {mag})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_products_equal_the_avx2_ones_bit_for_bit() {
        if !cpu_ok() || !avx512_ok() {
            println!("SKIPPED winograd AVX-512 products: this CPU has no AVX-512F (or ECSTRAIN_NO_AVX512 is set)");
            return;
        }
        let mut rng = Rng::new(13);
        // (tiles, k, cout): every channel block (64, 32, 16 and the 8-channel AVX2 tail) and tile tails.
        for &(t, k, cout) in
            &[(49, 32, 64), (13, 8, 8), (25, 16, 24), (7, 24, 40), (30, 64, 32), (1, 8, 16), (100, 40, 120)]
        {
            let u: Vec<f32> = (0..k * cout).map(|_| rng.normal() as f32).collect();
            let v: Vec<f32> = (0..t * k).map(|_| rng.normal() as f32).collect();
            let (mut fast, mut avx2) = (vec![f32::NAN; t * cout], vec![f32::NAN; t * cout]);
            // SAFETY: AVX2, FMA and AVX-512F are present (checked above); the lengths match.
            unsafe {
                product(&mut fast, &u, &v, Prod::forward(t, k, cout));
                product_avx2_from(&mut avx2, &u, &v, Prod::forward(t, k, cout), 0);
            }
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&avx2), "t {t}, k {k}, cout {cout}");
        }
    }

    #[test]
    fn pooled_equals_the_output_then_the_pool_bit_for_bit() {
        use crate::ops::pool::{max_pool2d_forward, Pool2dGeom};
        if !cpu_ok() {
            println!("SKIPPED winograd: this CPU has no AVX2 + FMA");
            return;
        }
        let mut rng = Rng::new(12);
        for &(cin, cout, h, w, pad) in &[(32, 64, 14, 14, (1, 1)), (8, 16, 6, 10, (1, 1)), (16, 8, 6, 4, (0, 0))] {
            let s = Shape { cin, cout, h, w, pad, oh: h + 2 * pad.0 - 2, ow: w + 2 * pad.1 - 2 };
            // Rounded inputs and weights give exact ties among the four outputs of some windows.
            let mut x: Vec<f32> = (0..cin * h * w).map(|_| (rng.normal() * 2.0).round() as f32).collect();
            let wt: Vec<f32> = (0..cout * cin * 9).map(|_| (rng.normal() * 2.0).round() as f32 * 0.25).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.normal() as f32).collect();
            let mut u = vec![0f32; u_len(cin, cout)];
            transform_weights(&mut u, &wt, cin, cout, false);
            let mut ws = vec![f32::NAN; s.workspace_len()];
            let pg = Pool2dGeom { n: 1, c: cout, h: s.oh, w: s.ow, kh: 2, kw: 2, stride: (2, 2), padding: (0, 0) };
            let np = cout * s.oh * s.ow / 4;
            let run = |x: &[f32], ws: &mut [f32]| {
                let mut full = vec![f32::NAN; cout * s.oh * s.ow];
                forward_sample(&mut full, x, &u, Some(&bias), ws, &s);
                let (mut want, mut want_am) = (vec![0f32; np], vec![0u32; np]);
                max_pool2d_forward(&mut want, &mut want_am, &full, &pg);
                let (mut got, mut got_am) = (vec![f32::NAN; np], vec![u32::MAX; np]);
                let ok = forward_sample_pooled(&mut got, &mut got_am, x, &u, Some(&bias), ws, &s);
                (ok, want, want_am, got, got_am)
            };
            let (ok, want, want_am, got, got_am) = run(&x, &mut ws);
            assert!(ok, "{s:?}: no NaN, so the pooled path must answer");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{s:?}: pooled values");
            assert_eq!(got_am, want_am, "{s:?}: argmax");
            // A NaN in the input reaches some window: the pooled path declines.
            x[cin * h * w / 2] = f32::NAN;
            assert!(!run(&x, &mut ws).0, "{s:?}: a NaN must send the sample to the unfused path");
        }
    }
}
