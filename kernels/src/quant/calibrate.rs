//! Activation calibration: a streaming histogram of |x| and the choice of the clipping range `amax` that
//! gives an activation its int8 scale (`amax / 127`).
//!
//! A [`Calibrator`] observes batches one at a time and keeps only counts, never the data: a histogram of
//! |x|, split by sign (so the signed histogram ONNX Runtime's entropy search uses is available too). It
//! covers `[0, bins · width)` with `width` fixed by the first non-zero batch (`max|x| / num_bins`); when a
//! later batch reaches beyond the range, bins of the same width are appended (as ONNX Runtime's
//! `HistogramCollector` and pytorch-quantization's `HistogramCalibrator` do), and should that exceed
//! [`CalibratorConfig::max_bins`], adjacent bins are merged pairwise (doubling the width) until it fits, so
//! memory stays bounded whatever the data does. NaNs and infinities are skipped and counted.
//!
//! The methods ([`CalibMethod`]) then read the histogram: `max`, `percentile`, `entropy` (KL divergence) and
//! `mse`. `percentile` and `entropy` follow ONNX Runtime's `compute_percentile` / `compute_entropy` step for
//! step (tested against its thresholds on the fixture `kernels/tests/fixtures/calib_ort.json`).

use super::qparams::QMAX;

/// How a [`Calibrator`] turns what it observed into `amax`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibMethod {
    /// The running maximum of |x|: nothing is clipped, but one outlier stretches the scale for everyone.
    Max,
    /// The `p`-th percentile of |x| (`0 < p <= 100`; e.g. 99.99): ONNX Runtime's symmetric
    /// `compute_percentile`: the first bin where the cumulative fraction reaches `p / 100`, whose *lower*
    /// edge is the threshold, capped at the observed maximum.
    Percentile(f64),
    /// TensorRT's entropy calibration: among thresholds at bin edges `i · width` (from
    /// `num_quantized_bins` bins up to the whole histogram), the one minimising the KL divergence between
    /// the clipped histogram (outliers folded into its last bin) and its quantization into
    /// `num_quantized_bins` levels expanded back; computed like ONNX Runtime's `get_entropy_threshold`
    /// (merged-bin counts spread over the non-empty bins with integer division, eps = 1e-4 smoothing).
    Entropy,
    /// The `amax` at a bin edge minimising the mean squared error of fake-quantizing the histogram's bin
    /// centres (weighted by their counts) with `scale = amax / 127`: trades rounding error against clipping
    /// error directly, as pytorch-quantization's `mse` method.
    Mse,
}

impl CalibMethod {
    /// Names accepted in configs (`percentile` uses [`DEFAULT_PERCENTILE`]).
    pub const NAMES: &'static [&'static str] = &["max", "percentile", "entropy", "mse"];

    /// Parses a config name (case-insensitive; `minmax` is an alias of `max`, `kl` of `entropy`).
    pub fn parse(s: &str) -> Option<CalibMethod> {
        match s.to_ascii_lowercase().as_str() {
            "max" | "minmax" => Some(CalibMethod::Max),
            "percentile" => Some(CalibMethod::Percentile(DEFAULT_PERCENTILE)),
            "entropy" | "kl" => Some(CalibMethod::Entropy),
            "mse" => Some(CalibMethod::Mse),
            _ => None,
        }
    }

    /// `Percentile(p)` after checking `0 < p <= 100`, or the error to report for the config key `key`.
    pub fn percentile(p: f64, key: &str) -> Result<CalibMethod, String> {
        if p > 0.0 && p <= 100.0 {
            Ok(CalibMethod::Percentile(p))
        } else {
            Err(format!("{key}: percentile must be in (0, 100] (e.g. 99.99), got {p}"))
        }
    }
}

/// Percentile used by the bare `percentile` method name.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// Histogram sizes of a [`Calibrator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibratorConfig {
    /// Bins per sign the first non-zero batch is spread over: 2048 (TensorRT's |x| resolution; ONNX
    /// Runtime's signed histogram of 4096 bins has the same width).
    pub num_bins: usize,
    /// Most bins per sign the histogram may grow to before merging pairs (16 · 2048).
    pub max_bins: usize,
    /// Quantization levels of the entropy search over the signed range `[-amax, amax]`: 255, int8's
    /// symmetric values (ONNX Runtime's `num_quantized_bins`; 127 a side, TensorRT's 128 |x| levels).
    pub num_quantized_bins: usize,
}

impl Default for CalibratorConfig {
    fn default() -> Self {
        CalibratorConfig { num_bins: 2048, max_bins: 16 * 2048, num_quantized_bins: 255 }
    }
}

/// Bins per sign above which the entropy search merges groups of bins first (its cost is quadratic).
const ENTROPY_MAX_BINS_FACTOR: usize = 4;

/// Streaming histogram of one activation tensor (see the module doc).
///
/// Kept as two |x| histograms with the same bins, one per sign: their sum is the histogram of |x| that
/// `percentile` and `mse` read, their concatenation (negative side reversed) the signed histogram,
/// symmetric about 0, that ONNX Runtime's entropy search reads.
#[derive(Clone, Debug)]
pub struct Calibrator {
    cfg: CalibratorConfig,
    /// Counts of `x >= 0` in `[i · width, (i+1) · width)`; the maximum goes into the last bin.
    pos: Vec<u64>,
    /// Counts of `x < 0` with `|x|` in `[i · width, (i+1) · width)`.
    neg: Vec<u64>,
    /// Bin width; 0 until a batch with a non-zero value arrives.
    width: f64,
    /// Smallest and largest value seen (finite).
    min: f32,
    max: f32,
    /// Zeros seen before the range was known (added to `pos[0]` once it is).
    early_zeros: u64,
    /// Non-finite values skipped.
    skipped: u64,
}

impl Calibrator {
    /// An empty calibrator. Panics if a bin count is 0 or `max_bins < num_bins`.
    pub fn new(cfg: CalibratorConfig) -> Calibrator {
        assert!(cfg.num_bins > 0 && cfg.num_quantized_bins > 0, "Calibrator: bin counts must be positive");
        assert!(cfg.max_bins >= cfg.num_bins.max(2), "Calibrator: max_bins must be at least num_bins (and 2)");
        Calibrator { cfg, pos: Vec::new(), neg: Vec::new(), width: 0.0, min: 0.0, max: 0.0, early_zeros: 0, skipped: 0 }
    }

    /// Adds one batch of activations to the histogram (the values are not kept).
    pub fn observe(&mut self, x: &[f32]) {
        let (mut lo, mut hi, mut finite) = (0.0f32, 0.0f32, 0u64);
        for &v in x {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
                finite += 1;
            }
        }
        self.skipped += x.len() as u64 - finite;
        let batch_max = hi.max(-lo);
        if self.width == 0.0 {
            if batch_max == 0.0 {
                self.early_zeros += finite;
                return;
            }
            self.width = batch_max as f64 / self.cfg.num_bins as f64;
            self.pos = vec![0; self.cfg.num_bins];
            self.neg = vec![0; self.cfg.num_bins];
            self.pos[0] = std::mem::take(&mut self.early_zeros);
        } else if batch_max as f64 > self.width * self.pos.len() as f64 {
            self.grow(batch_max as f64);
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let (inv, last) = (1.0 / self.width, self.pos.len() - 1);
        for &v in x {
            if v.is_finite() {
                let i = ((v.abs() as f64 * inv) as usize).min(last);
                if v < 0.0 {
                    self.neg[i] += 1;
                } else {
                    self.pos[i] += 1;
                }
            }
        }
    }

    /// Extends the range to cover `to`: same-width bins appended, pairs merged while over `max_bins`.
    fn grow(&mut self, to: f64) {
        let mut need = (to / self.width).ceil() as usize;
        while need > self.cfg.max_bins {
            for side in [&mut self.pos, &mut self.neg] {
                *side = side.chunks(2).map(|c| c.iter().sum()).collect();
            }
            self.width *= 2.0;
            need = (to / self.width).ceil() as usize;
        }
        let len = need.max(self.pos.len());
        self.pos.resize(len, 0);
        self.neg.resize(len, 0);
    }

    /// Largest |x| observed (0 before any data).
    pub fn max_abs(&self) -> f32 {
        self.max.max(-self.min)
    }

    /// Values observed (finite ones; see [`Calibrator::skipped`]).
    pub fn count(&self) -> u64 {
        self.pos.iter().chain(&self.neg).sum::<u64>() + self.early_zeros
    }

    /// Non-finite values skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The histogram of |x| (allocates) and its bin width (empty and 0 before the first non-zero value).
    pub fn abs_histogram(&self) -> (Vec<u64>, f64) {
        (self.pos.iter().zip(&self.neg).map(|(a, b)| a + b).collect(), self.width)
    }

    /// The clipping range chosen by `method`, in `[0, max_abs]`; 0 when nothing non-zero was observed
    /// (`scale_from_amax` then falls back to its documented scale).
    pub fn amax(&self, method: CalibMethod) -> f32 {
        let max_abs = self.max_abs();
        if self.width == 0.0 || max_abs == 0.0 {
            return 0.0;
        }
        let a = match method {
            CalibMethod::Max => return max_abs,
            CalibMethod::Percentile(p) => self.percentile_amax(p),
            CalibMethod::Entropy => self.entropy_amax(),
            CalibMethod::Mse => self.mse_amax(),
        };
        (a as f32).min(max_abs)
    }

    fn percentile_amax(&self, p: f64) -> f64 {
        let (hist, width) = self.abs_histogram();
        let total = hist.iter().sum::<u64>() as f64;
        // As numpy's cumsum(hist / total) followed by searchsorted(cdf, p / 100) (the first i with
        // cdf[i] >= p / 100); its lower edge is ORT's threshold. Past the end: the top edge.
        let target = p / 100.0;
        let mut cdf = 0.0f64;
        for (i, &c) in hist.iter().enumerate() {
            cdf += c as f64 / total;
            if cdf >= target {
                return i as f64 * width;
            }
        }
        hist.len() as f64 * width
    }

    fn entropy_amax(&self) -> f64 {
        // The signed histogram h[0..2n] over [-n·w, n·w), zero bin at n; bins merged in groups first when
        // the histogram grew far (the search is quadratic).
        let factor = self.pos.len().div_ceil(ENTROPY_MAX_BINS_FACTOR * self.cfg.num_bins).max(1);
        let side = |v: &[u64]| -> Vec<u64> { v.chunks(factor).map(|c| c.iter().sum()).collect() };
        let (pos, neg) = (side(&self.pos), side(&self.neg));
        let (n, width) = (pos.len(), self.width * factor as f64);
        let h: Vec<u64> = neg.iter().rev().chain(&pos).copied().collect();
        let nq = self.cfg.num_quantized_bins;
        let half = nq / 2;
        if n < half.max(1) {
            return self.max_abs() as f64;
        }
        let mut prefix = vec![0u64; 2 * n + 1];
        for (i, &c) in h.iter().enumerate() {
            prefix[i + 1] = prefix[i] + c;
        }
        let sum = |a: usize, b: usize| prefix[b] - prefix[a];
        let (mut p, mut q) = (vec![0.0f64; 2 * n], vec![0.0f64; 2 * n]);
        let mut best = (f64::INFINITY, half);
        for i in half..=n {
            let (start, end) = (n - i, (n + i + 1).min(2 * n));
            let len = end - start;
            let (p, q) = (&mut p[..len], &mut q[..len]);
            for (pv, &c) in p.iter_mut().zip(&h[start..end]) {
                *pv = c as f64;
            }
            p[0] += sum(0, start) as f64;
            p[len - 1] += sum(end, 2 * n) as f64;
            // Merge the slice (without the outliers) into nq bins, the remainder into the last one, then
            // spread each merged count evenly (int64 truncation, as ORT) over its non-empty reference bins.
            let merged = len / nq;
            q.fill(0.0);
            for j in 0..nq {
                let (s, e) = (j * merged, (j + 1) * merged);
                let mut count = sum(start + s, start + e);
                if j == nq - 1 {
                    count += sum(start + nq * merged, end);
                }
                let norm = p[s..e].iter().filter(|&&v| v != 0.0).count() as u64;
                // ORT stores the expansion in an int64 array: the share is truncated.
                if let Some(share) = count.checked_div(norm) {
                    q[s..e].fill(share as f64);
                }
            }
            let kl = if smooth(p) && smooth(q) { kl_divergence(p, q) } else { f64::INFINITY };
            if kl < best.0 {
                best = (kl, i);
            }
        }
        // ORT's threshold pair (edge[start], edge[end]), each capped by the observed extreme on its side;
        // the symmetric range is the larger magnitude.
        let i = best.1;
        let lo = (i as f64 * width).min(-self.min as f64);
        let hi = ((i + 1).min(n) as f64 * width).min(self.max as f64);
        lo.max(hi)
    }

    fn mse_amax(&self) -> f64 {
        let (hist, width) = self.abs_histogram();
        // Candidates at bin edges, thinned to at most num_bins of them (the cost is candidates × bins).
        let n = hist.len();
        let stride = n.div_ceil(self.cfg.num_bins).max(1);
        let mut best = (f64::INFINITY, n);
        let mut i = stride.min(n);
        loop {
            let scale = i as f64 * width / QMAX as f64;
            let mut err = 0.0f64;
            for (b, &c) in hist.iter().enumerate() {
                if c != 0 {
                    let centre = (b as f64 + 0.5) * width;
                    let fq = (centre / scale).round_ties_even().min(QMAX as f64) * scale;
                    err += c as f64 * (centre - fq) * (centre - fq);
                }
            }
            if err < best.0 {
                best = (err, i);
            }
            if i == n {
                break;
            }
            i = (i + stride).min(n);
        }
        best.1 as f64 * width
    }
}

/// ORT's `smooth_distribution` in place: zeros become `eps`, every non-zero loses `eps · zeros / nonzeros`
/// (so the mass is kept). Returns false for an all-zero distribution (ORT's `None`, an infinite divergence).
fn smooth(d: &mut [f64]) -> bool {
    const EPS: f64 = 1e-4;
    let zeros = d.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = d.len() - zeros;
    if nonzeros == 0 {
        return false;
    }
    let eps1 = EPS * zeros as f64 / nonzeros as f64;
    for v in d.iter_mut() {
        *v = if *v == 0.0 { EPS } else { *v - eps1 };
    }
    true
}

/// `Σ p ln(p / q)` of the normalised distributions (scipy's `entropy(p, q)`); both strictly positive here.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    p.iter().zip(q).map(|(&p, &q)| (p / sp) * ((p / sp) / (q / sq)).ln()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::qparams::{dequantize_one, quantize_one, scale_from_amax};

    fn fixture() -> serde_json::Value {
        let text = include_str!("../../tests/fixtures/calib_ort.json");
        serde_json::from_str(text).expect("calib_ort.json")
    }

    fn hex_f32(s: &str) -> Vec<f32> {
        let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn batches(d: &serde_json::Value) -> Vec<Vec<f32>> {
        d["batches"].as_array().unwrap().iter().map(|b| hex_f32(b.as_str().unwrap())).collect()
    }

    fn calibrated(batches: &[Vec<f32>]) -> Calibrator {
        let mut c = Calibrator::new(CalibratorConfig::default());
        for b in batches {
            c.observe(b);
        }
        c
    }

    fn quant_mse(x: &[f32], amax: f32) -> f64 {
        let s = scale_from_amax(amax);
        x.iter().map(|&v| (v as f64 - dequantize_one(quantize_one(v, s), s) as f64).powi(2)).sum::<f64>()
            / x.len() as f64
    }

    #[test]
    fn names_parse() {
        for &n in CalibMethod::NAMES {
            assert!(CalibMethod::parse(n).is_some(), "{n}");
        }
        assert_eq!(CalibMethod::parse("Percentile"), Some(CalibMethod::Percentile(DEFAULT_PERCENTILE)));
        assert_eq!(CalibMethod::parse("histogram"), None);
        assert_eq!(CalibMethod::percentile(99.9, "quantize.percentile"), Ok(CalibMethod::Percentile(99.9)));
        let e = CalibMethod::percentile(0.0, "quantize.percentile").unwrap_err();
        assert!(e.contains("quantize.percentile") && e.contains("(0, 100]"), "{e}");
    }

    #[test]
    fn max_and_streaming_growth() {
        let mut c = Calibrator::new(CalibratorConfig { num_bins: 8, max_bins: 32, num_quantized_bins: 4 });
        c.observe(&[0.0, 0.0]);
        assert_eq!((c.amax(CalibMethod::Max), c.count()), (0.0, 2));
        c.observe(&[1.0, -0.5, f32::NAN, 0.1]); // width 1/8
        assert_eq!(c.abs_histogram().0.len(), 8);
        assert_eq!(c.abs_histogram().0[0], 3); // the two early zeros and 0.1
        c.observe(&[-3.0, 2.0]); // range 1 -> 3: 24 bins of width 1/8
        assert_eq!(c.abs_histogram().0.len(), 24);
        c.observe(&[10.0, f32::INFINITY]); // 80 bins > 32: merged twice, width 1/2, 20 bins
        let (h, w) = c.abs_histogram();
        assert_eq!((h.len(), w), (20, 0.5));
        assert_eq!((c.count(), c.skipped(), c.max_abs()), (8, 2, 10.0));
        assert_eq!(c.amax(CalibMethod::Max), 10.0);
        assert_eq!(h.iter().sum::<u64>(), 8);
        // Bins of width 1/8 were 0: {0, 0, 0.1}, 4: {0.5}, 7: {1.0, the last bin then}, 16: {2}, 23: {3};
        // merged by 4, then 10 lands in the new last bin.
        assert_eq!((h[0], h[1], h[4], h[5], h[19]), (3, 2, 1, 1, 1));
        assert_eq!(Calibrator::new(CalibratorConfig::default()).amax(CalibMethod::Entropy), 0.0);
    }

    #[test]
    fn percentile_and_entropy_match_onnx_runtime() {
        let f = fixture();
        for d in f["distributions"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            let c = calibrated(&batches(d));
            assert_eq!(c.amax(CalibMethod::Max) as f64, d["max"].as_f64().unwrap(), "{name}: max");
            let width = c.abs_histogram().1;
            for p in d["percentile"].as_array().unwrap() {
                let (pc, want) = (p["p"].as_f64().unwrap(), p["amax"].as_f64().unwrap());
                let got = c.amax(CalibMethod::Percentile(pc)) as f64;
                eprintln!("{name}: percentile {pc}: {got} vs ORT {want} ({:.2} bins)", (got - want).abs() / width);
                // ORT's first histogram starts at min|x| rather than 0: edges shift by under one bin.
                assert!((got - want).abs() <= 1.0 * width, "{name} p{pc}: {got} vs ORT {want} (bin {width})");
            }
            let want = d["entropy_amax"].as_f64().unwrap();
            let got = c.amax(CalibMethod::Entropy) as f64;
            eprintln!(
                "{name}: entropy {got} vs ORT {want} (rel {:.3e}, {:.2} bins)",
                (got - want).abs() / want,
                (got - want).abs() / width
            );
            // Same histogram, same search: the same bin edge, up to f32 rounding of the edge itself.
            assert!((got - want).abs() <= 1e-6 * want, "{name} entropy: {got} vs ORT {want}");
        }
    }

    /// Calibrates `batches` with `mse` and returns (its quantization MSE on the raw data, the best MSE of a
    /// brute-force search over `steps` amax values up to max|x|, max calibration's MSE).
    fn mse_vs_brute_force(bs: &[Vec<f32>], steps: usize) -> (f64, f64, f64) {
        let all: Vec<f32> = bs.concat();
        let c = calibrated(bs);
        let max = c.amax(CalibMethod::Max);
        let brute = (1..=steps).map(|i| quant_mse(&all, max * i as f32 / steps as f32)).fold(f64::INFINITY, f64::min);
        (quant_mse(&all, c.amax(CalibMethod::Mse)), brute, quant_mse(&all, max))
    }

    #[test]
    fn mse_is_close_to_brute_force_on_the_fixture() {
        for d in fixture()["distributions"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            let (got, brute, at_max) = mse_vs_brute_force(&batches(d), 2000);
            eprintln!(
                "{name}: mse-calibrated {got:.4e}, brute force {brute:.4e} (x{:.4}), max {at_max:.4e}",
                got / brute
            );
            assert!(got <= 1.05 * brute, "{name}: mse-calibrated error {got} vs brute force {brute}");
            assert!(got <= at_max, "{name}: mse-calibrated error {got} above max calibration's {at_max}");
        }
    }

    #[test]
    fn mse_clips_rare_outliers_that_max_keeps() {
        // 2^18 gaussian values with four outliers: max calibration spends its 127 steps on [-40, 40], mse
        // clips the outliers and quantizes the bulk finely. (With only thousands of values, as in the ORT
        // fixture, keeping the outliers is what minimises the squared error, so mse rightly keeps them.)
        let mut rng = crate::rng::Rng::new(3);
        let mut bs: Vec<Vec<f32>> = (0..4).map(|_| (0..1 << 16).map(|_| rng.normal() as f32).collect()).collect();
        for (b, v) in bs.iter_mut().zip([40.0f32, -35.0, 30.0, -38.0]) {
            b[100] = v;
        }
        let (got, brute, at_max) = mse_vs_brute_force(&bs, 400);
        eprintln!(
            "rare outliers: mse-calibrated {got:.4e}, brute force {brute:.4e} (x{:.4}), max {at_max:.4e} (x{:.3})",
            got / brute,
            got / at_max
        );
        assert!(got <= 1.05 * brute, "mse-calibrated error {got} vs brute force {brute}");
        assert!(got < 0.7 * at_max, "mse-calibrated error {got} not clearly below max calibration's {at_max}");
    }
}
