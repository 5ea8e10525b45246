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

/// Weighted fit `x ≈ s * q` with integer `q` in `qmin..=qmax` (qmin <= 0 < qmax).
///
/// Candidate inverse scales map the largest-|x| element onto either end of
/// the range, stretched by ±40%; for each, `s` is the weighted least-squares
/// scale of the rounded codes, and the best is refined by one re-rounding.
/// Writes the codes to `q` and returns `s` (0 when `x` is all zero).
pub(crate) fn fit_symmetric(x: &[f32], w: &[f32], qmin: i32, qmax: i32, q: &mut [i8]) -> f32 {
    let xm = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if xm == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let (lo, hi) = (qmin as f32, qmax as f32);
    let eval = |iscale: f32| -> (f32, f32) {
        let (mut sxq, mut sqq) = (0f32, 0f32);
        for (&xi, &wi) in x.iter().zip(w) {
            let qi = round_clamp(iscale * xi, lo, hi);
            sxq += wi * xi * qi;
            sqq += wi * qi * qi;
        }
        if sqq > 0.0 { (sxq * sxq / sqq, sxq / sqq) } else { (0.0, 0.0) }
    };
    let (mut best_gain, mut best_s) = (-1f32, 0f32);
    for end in [lo, hi] {
        for k in -8..=8 {
            let (gain, s) = eval(end * (1.0 + 0.05 * k as f32) / xm);
            if gain > best_gain {
                best_gain = gain;
                best_s = s;
            }
        }
    }
    if best_s != 0.0 {
        let (gain, s) = eval(1.0 / best_s);
        if gain > best_gain {
            best_s = s;
        }
    }
    round_codes(x, best_s, qmin, qmax, q);
    best_s
}

/// `q = clamp(round(x / s))`, all zero when `s` is 0.
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

/// Weighted fit `x ≈ a * q + b` with `q` in `0..=qmax` and `b <= 0` (the
/// format stores a non-negative minimum that is subtracted). Tries several
/// stretches of the [min(x, 0), max(x)] range; for each the codes are fixed
/// and (a, b) solved by weighted least squares. Writes the codes, returns (a, b).
pub(crate) fn fit_affine(x: &[f32], w: &[f32], qmax: u8, q: &mut [u8]) -> (f32, f32) {
    let xmin = x.iter().fold(0f32, |m, &v| m.min(v));
    let xmax = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if xmax <= xmin {
        q.fill(0);
        return (0.0, xmin);
    }
    let nq = qmax as f32;
    let mut tmp = [0u8; 32];
    let tmp = &mut tmp[..x.len()];
    let (mut best_err, mut best) = (f32::INFINITY, (0f32, xmin));
    for k in -6..=6 {
        let iscale = (nq + 0.1 * k as f32) / (xmax - xmin);
        for (t, &xi) in tmp.iter_mut().zip(x) {
            *t = round_clamp(iscale * (xi - xmin), 0.0, nq) as u8;
        }
        let (a, b) = solve_affine(x, w, tmp);
        let err = affine_error(x, w, tmp, a, b);
        if err < best_err {
            best_err = err;
            best = (a, b);
            q.copy_from_slice(tmp);
        }
    }
    best
}

/// Weighted least squares for `x ≈ a * q + b` with the constraint b <= 0.
pub(crate) fn solve_affine(x: &[f32], w: &[f32], q: &[u8]) -> (f32, f32) {
    let (mut sw, mut sq, mut sqq, mut sx, mut sxq) = (0f32, 0f32, 0f32, 0f32, 0f32);
    for ((&xi, &wi), &qi) in x.iter().zip(w).zip(q) {
        let qf = qi as f32;
        sw += wi;
        sq += wi * qf;
        sqq += wi * qf * qf;
        sx += wi * xi;
        sxq += wi * xi * qf;
    }
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

pub(crate) fn affine_error(x: &[f32], w: &[f32], q: &[u8], a: f32, b: f32) -> f32 {
    x.iter().zip(w).zip(q).map(|((&xi, &wi), &qi)| {
        let e = xi - a * qi as f32 - b;
        wi * e * e
    }).sum()
}
