//! Helpers shared by the low-bit encoders: block normalisation, default
//! weights, f16 scale storage and small weighted least-squares fits.

use crate::half::f32_to_f16;
use crate::layout::{shared_block_weights, BlockType};

/// Weights per super-block of every low-bit type (from the layout table).
pub(crate) const QK_K: usize = shared_block_weights(&[
    BlockType::Q2_K,
    BlockType::Q3_K,
    BlockType::IQ2_XXS,
    BlockType::IQ1_S,
    BlockType::IQ1_M,
    BlockType::TQ1_0,
    BlockType::TQ2_0,
]);
const F16_MAX: f32 = 65504.0;

/// f32 -> f16 bits, clamped to the finite range so a stored scale never decodes to inf.
#[inline]
pub(crate) fn f16_finite(v: f32) -> u16 {
    let v = if v.is_nan() { 0.0 } else { v.clamp(-F16_MAX, F16_MAX) };
    f32_to_f16(v)
}

#[inline]
pub(crate) fn put_f16(dst: &mut [u8], v: f32) -> f32 {
    let h = f16_finite(v);
    dst[..2].copy_from_slice(&h.to_le_bytes());
    crate::half::f16_to_f32(h)
}

#[inline]
pub(crate) fn get_f16(src: &[u8]) -> f32 {
    crate::half::f16_to_f32(u16::from_le_bytes([src[0], src[1]]))
}

/// Round to nearest (ties to even) after clamping to [lo, hi], small integers
/// only (|lo|, |hi| < 2^22). Adding and removing 1.5 * 2^23 rounds in plain
/// float arithmetic, which vectorises, unlike the libm `roundf` call that
/// baseline x86-64 needs for `f32::round`. Used for searches only: the
/// reference-exact TQ path keeps `f32::round` (ties away from zero).
#[inline(always)]
pub(crate) fn round_clamp(v: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let c = if v < lo { lo } else if v > hi { hi } else { v };
    (c + MAGIC) - MAGIC
}

/// Scale `src` into `x` so that max |x| = 1 (in f64, so denormal and huge
/// inputs neither overflow nor lose precision) and fill the error weights `w`.
///
/// Weights are `sqrt(sigma2 + x^2)` (sigma2 = mean x^2 of the block), which
/// favours large weights a little; with an importance vector they are
/// multiplied by the block-normalised importance plus a small floor so that
/// every weight stays positive. Returns the block's max |src| (0 for an
/// all-zero block, in which case `x` and `w` are left untouched).
#[inline(always)]
pub(crate) fn prepare_block(src: &[f32], importance: Option<&[f32]>, x: &mut [f32], w: &mut [f32]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let inv = 1.0 / amax as f64;
    let mut sum2 = 0f64;
    for (xi, &s) in x.iter_mut().zip(src) {
        *xi = (s as f64 * inv) as f32;
        sum2 += (*xi as f64) * (*xi as f64);
    }
    let sigma2 = (sum2 / src.len() as f64) as f32;
    for (wi, &xi) in w.iter_mut().zip(x.iter()) {
        *wi = (sigma2 + xi * xi).sqrt();
    }
    if let Some(imp) = importance {
        let mean = imp.iter().map(|&v| v as f64).sum::<f64>() / imp.len() as f64;
        if mean > 0.0 {
            for (wi, &q) in w.iter_mut().zip(imp) {
                *wi *= ((q as f64 / mean) as f32) + 1e-3;
            }
        }
    }
    amax
}

/// Candidate inverse scales of [`fit_symmetric`]: 17 stretches (±40% in 5%
/// steps) for each end of the range, padded to a multiple of 4 lanes.
const SYM_TRIES: usize = 34;
const SYM_LANES: usize = 36;

/// Weighted fit `x ≈ s * q` with integer `q` in `qmin..=qmax` (qmin <= 0 < qmax).
///
/// Candidate inverse scales map the largest-|x| element onto either end of
/// the range, stretched by ±40%; for each, `s` is the weighted least-squares
/// scale of the rounded codes, and the best is refined by one re-rounding.
/// Writes the codes to `q` and returns `s` (0 when `x` is all zero).
///
/// All candidates are evaluated together, one lane each, so the loop over
/// the elements vectorises; every lane accumulates in element order, so the
/// result is the same as trying the candidates one by one.
#[inline(always)]
pub(crate) fn fit_symmetric(x: &[f32], w: &[f32], qmin: i32, qmax: i32, q: &mut [i8]) -> f32 {
    let xm = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if xm == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let (lo, hi) = (qmin as f32, qmax as f32);
    let mut isc = [0f32; SYM_LANES];
    for (c, end) in [lo, hi].into_iter().enumerate() {
        for k in -8..=8i32 {
            isc[17 * c + (k + 8) as usize] = end * (1.0 + 0.05 * k as f32) / xm;
        }
    }
    let (mut sxq, mut sqq) = ([0f32; SYM_LANES], [0f32; SYM_LANES]);
    for (&xi, &wi) in x.iter().zip(w) {
        let wx = wi * xi;
        for c in 0..SYM_LANES {
            let qi = round_clamp(isc[c] * xi, lo, hi);
            sxq[c] += wx * qi;
            sqq[c] += wi * qi * qi;
        }
    }
    let (mut best_gain, mut best_s) = (-1f32, 0f32);
    for c in 0..SYM_TRIES {
        let (gain, s) = if sqq[c] > 0.0 { (sxq[c] * sxq[c] / sqq[c], sxq[c] / sqq[c]) } else { (0.0, 0.0) };
        if gain > best_gain {
            best_gain = gain;
            best_s = s;
        }
    }
    if best_s != 0.0 {
        let iscale = 1.0 / best_s;
        let (mut sxq, mut sqq) = (0f32, 0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let qi = round_clamp(iscale * xi, lo, hi);
            sxq += wi * xi * qi;
            sqq += wi * qi * qi;
        }
        if sqq > 0.0 && sxq * sxq / sqq > best_gain {
            best_s = sxq / sqq;
        }
    }
    round_codes(x, best_s, qmin, qmax, q);
    best_s
}

/// `q = clamp(round(x / s))`, all zero when `s` is 0.
#[inline(always)]
pub(crate) fn round_codes(x: &[f32], s: f32, qmin: i32, qmax: i32, q: &mut [i8]) {
    if s == 0.0 || !s.is_finite() {
        q.fill(0);
        return;
    }
    let inv = 1.0 / s;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = round_clamp(xi * inv, qmin as f32, qmax as f32) as i8;
    }
}

/// Sub-blocks per super-block and weights per sub-block of [`fit_affine_16x16`].
pub(crate) const SUB: usize = 16;

/// Weighted fits `x ≈ a * q + b` with `q` in `0..=qmax` and `b <= 0` (the
/// format stores a non-negative minimum that is subtracted) of the sixteen
/// 16-weight sub-blocks of a super-block. For each sub-block, several
/// stretches of the [min(x, 0), max(x)] range fix the codes and (a, b) is
/// solved by weighted least squares; the least weighted error wins. Writes
/// the codes, returns (a, b) per sub-block.
///
/// The sub-blocks run side by side (lane j = sub-block j, elements
/// transposed), so every step is a vertical operation on 16 lanes; each lane
/// accumulates in element order, exactly like a fit of one sub-block alone.
#[inline(always)]
pub(crate) fn fit_affine_16x16(x: &[f32; QK_K], w: &[f32; QK_K], qmax: u8, q: &mut [u8; QK_K]) -> ([f32; SUB], [f32; SUB]) {
    type Lanes = [f32; SUB];
    let (mut xt, mut wt) = ([[0f32; SUB]; SUB], [[0f32; SUB]; SUB]);
    for j in 0..SUB {
        for i in 0..SUB {
            xt[i][j] = x[SUB * j + i];
            wt[i][j] = w[SUB * j + i];
        }
    }
    let (mut xmin, mut xmax) = ([0f32; SUB], [f32::MIN; SUB]);
    let (mut sw, mut sx) = ([0f32; SUB], [0f32; SUB]);
    for i in 0..SUB {
        for j in 0..SUB {
            xmin[j] = xmin[j].min(xt[i][j]);
            xmax[j] = xmax[j].max(xt[i][j]);
            sw[j] += wt[i][j];
            sx[j] += wt[i][j] * xt[i][j];
        }
    }
    let mut range: Lanes = [0f32; SUB];
    for j in 0..SUB {
        range[j] = xmax[j] - xmin[j];
    }
    let nq = qmax as f32;
    let (mut best_err, mut best_a, mut best_b) = ([f32::INFINITY; SUB], [0f32; SUB], xmin);
    let mut qt = [[0f32; SUB]; SUB];
    let mut tmp = [[0f32; SUB]; SUB];
    for k in -6..=6i32 {
        let mut iscale: Lanes = [0f32; SUB];
        for j in 0..SUB {
            iscale[j] = (nq + 0.1 * k as f32) / range[j];
        }
        let (mut sq, mut sqq, mut sxq) = ([0f32; SUB], [0f32; SUB], [0f32; SUB]);
        for i in 0..SUB {
            for j in 0..SUB {
                let t = round_clamp(iscale[j] * (xt[i][j] - xmin[j]), 0.0, nq);
                // NaN (an inverse scale that overflowed) stands for code 0
                let t = if t == t { t } else { 0.0 };
                tmp[i][j] = t;
                sq[j] += wt[i][j] * t;
                sqq[j] += wt[i][j] * t * t;
                sxq[j] += wt[i][j] * xt[i][j] * t;
            }
        }
        let (mut a, mut b) = ([0f32; SUB], [0f32; SUB]);
        for j in 0..SUB {
            (a[j], b[j]) = solve_affine(sw[j], sq[j], sqq[j], sx[j], sxq[j]);
        }
        let mut err = [0f32; SUB];
        for i in 0..SUB {
            for j in 0..SUB {
                let e = xt[i][j] - a[j] * tmp[i][j] - b[j];
                err[j] += wt[i][j] * e * e;
            }
        }
        for j in 0..SUB {
            let better = err[j] < best_err[j];
            if better {
                best_err[j] = err[j];
                best_a[j] = a[j];
                best_b[j] = b[j];
            }
            for i in 0..SUB {
                qt[i][j] = if better { tmp[i][j] } else { qt[i][j] };
            }
        }
    }
    for j in 0..SUB {
        if xmax[j] <= xmin[j] {
            // constant sub-block: codes 0, the offset carries it
            best_a[j] = 0.0;
            best_b[j] = xmin[j];
            for i in 0..SUB {
                qt[i][j] = 0.0;
            }
        }
        for i in 0..SUB {
            q[SUB * j + i] = qt[i][j] as u8;
        }
    }
    (best_a, best_b)
}

/// Weighted least squares for `x ≈ a * q + b` with the constraint b <= 0,
/// from the sums of w, w q, w q², w x and w x q.
#[inline(always)]
fn solve_affine(sw: f32, sq: f32, sqq: f32, sx: f32, sxq: f32) -> (f32, f32) {
    let det = sw * sqq - sq * sq;
    if det > 1e-12 * sw * sqq {
        let a = (sw * sxq - sq * sx) / det;
        let b = (sqq * sx - sq * sxq) / det;
        if b <= 0.0 {
            return (a, b);
        }
    }
    // all codes equal, or the free fit wants a positive offset: fit a alone
    if sqq > 0.0 { (sxq / sqq, 0.0) } else { (0.0, (sx / sw.max(f32::MIN_POSITIVE)).min(0.0)) }
}
