//! Weighted scale searches shared by the block codecs.
//!
//! Every search minimises `sum_i w_i * (x_i - xhat_i)^2` over one (sub-)block,
//! where `xhat` is what the decoder will rebuild. The recipe is the same for
//! all three grid shapes (symmetric integers, affine integers, a non-linear
//! table): try a fan of candidate inverse scales around the one that maps the
//! extreme value onto the end of the grid, round every element for each
//! candidate, solve the weighted least-squares scale (and offset) for those
//! integers in closed form, keep the best, then alternate "round with the best
//! scale / re-solve" until the error stops falling. Inner loops accumulate in
//! fixed f32 lanes (vectorisable, deterministic); the closed forms run in f64.
//!
//! All functions are deterministic and never produce NaN for finite input:
//! degenerate blocks (all zero, zero weights) give a zero scale.

// `!(a > b)` is deliberate throughout: it is also true for NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

/// A grid index for `v` rounded half away from zero and clamped to `[lo, hi]`.
///
/// Exact (the legacy reference encoders rely on it) and free of a libm call:
/// `v - trunc(v)` is exact for the clamped range.
#[inline]
pub(crate) fn round_clamp(v: f32, lo: i32, hi: i32) -> i32 {
    // NaN (only from a zero scale) becomes `lo` through f32::max.
    let v = v.max(lo as f32).min(hi as f32);
    let i = v as i32;
    let frac = v - i as f32;
    i + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// `v` clamped to `[lo, hi]` and rounded to an integer (ties to even), as f32.
///
/// The search's inner loops use this: the add/subtract of 1.5 * 2^23 rounds
/// in one SIMD-friendly step. Ties are measure-zero for real data and only
/// pick between two equally good codes.
#[inline(always)]
pub(crate) fn round_fast(v: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.max(lo).min(hi) + MAGIC) - MAGIC
}

/// Lanes of the manual SIMD-style accumulators (fixed order keeps results deterministic).
pub(crate) const LANES: usize = 8;

/// Sum of accumulator lanes in a fixed order, widened to f64.
#[inline(always)]
pub(crate) fn lane_sum(a: [f32; LANES]) -> f64 {
    (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) as f64
}

/// Per-element search weights for one block.
///
/// With an importance vector (an imatrix row: one weight per column, already
/// sliced to this block) the weight is `importance * sqrt(sigma2 + x^2)`;
/// without one it is `sqrt(sigma2 + x^2)`, which favours large weights a
/// little, like llama.cpp. `sigma2` is the block's mean square. When every
/// weight is zero (an all-zero block or zero importance) the weights fall back
/// to the unweighted case so the search still has something to minimise.
pub(crate) fn element_weights(x: &[f32], importance: Option<&[f32]>, out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    let sigma2 =
        (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len().max(1) as f64) as f32;
    match importance {
        Some(imp) => {
            for ((o, &v), &q) in out.iter_mut().zip(x).zip(imp) {
                *o = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (sigma2 + v * v).sqrt();
            }
        }
    }
    let total: f64 = out.iter().map(|&v| v as f64).sum();
    if !(total > 0.0) || !total.is_finite() {
        out.iter_mut().for_each(|o| *o = 1.0);
    }
}

/// The element with the largest magnitude, with its sign (first one wins ties).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = 0.0f32;
    for &v in x {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// Best `s` for `x ~ s * L` with integers `L` in `[qmin, qmax]` (`qmin < 0 < qmax`).
///
/// The scale may come out negative: mapping the extreme value onto the longer
/// (negative) end of an asymmetric grid such as `[-8, 7]` gains half a step.
/// `ntry` candidates on each side of the long end are spaced `step` grid
/// units; the short end gets one candidate.
pub(crate) fn symmetric_scale(
    x: &[f32],
    w: &[f32],
    qmin: i32,
    qmax: i32,
    ntry: i32,
    step: f32,
) -> f32 {
    let maxv = signed_absmax(x);
    if maxv == 0.0 {
        return 0.0;
    }
    let (lo, hi) = (qmin as f32, qmax as f32);
    let fit = |iscale: f32| -> Option<(f64, f64)> {
        let (mut slx, mut sl2) = ([0.0f32; LANES], [0.0f32; LANES]);
        for_lanes(x, w, |k, v, wi| {
            let l = round_fast(iscale * v, lo, hi);
            slx[k] += wi * l * v;
            sl2[k] += wi * l * l;
        });
        let (slx, sl2) = (lane_sum(slx), lane_sum(sl2));
        (sl2 > 0.0).then(|| (slx * slx / sl2, slx / sl2))
    };
    let (mut best_score, mut best_scale) = (-1.0f64, 0.0f64);
    // The fan goes around the long (negative) end; the other end gets one try.
    for (anchor, tries) in [(qmin as f32, ntry), (qmax as f32, 0)] {
        for k in -tries..=tries {
            let target = anchor + anchor.signum() * step * k as f32;
            if let Some((score, scale)) = fit(target / maxv) {
                if score > best_score {
                    (best_score, best_scale) = (score, scale);
                }
            }
        }
    }
    // Alternate rounding and re-fitting; each accepted step lowers the error.
    for _ in 0..4 {
        if best_scale == 0.0 || !best_scale.is_finite() {
            break;
        }
        match fit((1.0 / best_scale) as f32) {
            Some((score, scale)) if score > best_score * (1.0 + 1e-12) => {
                (best_score, best_scale) = (score, scale)
            }
            _ => break,
        }
    }
    finite_or_zero(best_scale as f32)
}

/// Best `(scale, offset)` for `x ~ scale * L + offset` with integers `L` in `[0, nmax]`.
///
/// With `offset_nonpositive` the offset is kept `<= 0` (K-quants store it as a
/// non-negative "min" that is subtracted). The scale is never negative.
pub(crate) fn affine_scale(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    ntry: i32,
    step: f32,
    offset_nonpositive: bool,
) -> (f32, f32) {
    let mut lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if offset_nonpositive && lo > 0.0 {
        lo = 0.0;
    }
    if !(hi > lo) {
        return (0.0, if offset_nonpositive { lo.min(0.0) } else { lo });
    }
    // Weighted moments that do not depend on L.
    let (mut sw, mut sx, mut sx2) = (0.0f64, 0.0f64, 0.0f64);
    for (&v, &wi) in x.iter().zip(w) {
        sw += wi as f64;
        sx += wi as f64 * v as f64;
        sx2 += wi as f64 * v as f64 * v as f64;
    }
    // Least squares for the integers given by (iscale, base); returns (error, scale, offset).
    let top = nmax as f32;
    let fit = |iscale: f32, base: f32| -> Option<(f64, f64, f64)> {
        let (mut sl, mut sl2, mut slx) = ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
        for_lanes(x, w, |k, v, wi| {
            let l = round_fast(iscale * (v - base), 0.0, top);
            let wl = wi * l;
            sl[k] += wl;
            sl2[k] += wl * l;
            slx[k] += wl * v;
        });
        let (sl, sl2, slx) = (lane_sum(sl), lane_sum(sl2), lane_sum(slx));
        let det = sw * sl2 - sl * sl;
        let (mut scale, mut offset) = if det > 0.0 {
            ((sw * slx - sl * sx) / det, (sl2 * sx - sl * slx) / det)
        } else {
            return None;
        };
        if offset_nonpositive && offset > 0.0 {
            offset = 0.0;
            scale = slx / sl2;
        }
        if !(scale >= 0.0) || !scale.is_finite() || !offset.is_finite() {
            return None;
        }
        let err = sx2 - 2.0 * scale * slx - 2.0 * offset * sx
            + scale * scale * sl2
            + 2.0 * scale * offset * sl
            + offset * offset * sw;
        Some((err, scale, offset))
    };
    let range = hi - lo;
    let (mut best_err, mut best_scale, mut best_off) =
        (f64::INFINITY, (range / nmax as f32) as f64, lo as f64);
    for k in -ntry..=ntry {
        let iscale = (nmax as f32 + step * k as f32) / range;
        if let Some((err, scale, off)) = fit(iscale, lo) {
            if err < best_err {
                (best_err, best_scale, best_off) = (err, scale, off);
            }
        }
    }
    for _ in 0..4 {
        if !(best_scale > 0.0) {
            break;
        }
        match fit((1.0 / best_scale) as f32, best_off as f32) {
            Some((err, scale, off)) if err < best_err * (1.0 - 1e-12) => {
                (best_err, best_scale, best_off) = (err, scale, off)
            }
            _ => break,
        }
    }
    (
        finite_or_zero(best_scale as f32),
        finite_or_zero(best_off as f32),
    )
}

/// Index of the entry of the ascending `table` nearest to `v` (lower one on ties).
#[inline]
pub(crate) fn nearest_in_table(table: &[f32], v: f32) -> usize {
    let mut idx = 0;
    for i in 1..table.len() {
        if v > 0.5 * (table[i - 1] + table[i]) {
            idx = i;
        }
    }
    idx
}

/// Best `s` for `x ~ s * table[L]` over a non-linear ascending `table`.
///
/// Candidates fan out (`ntry` each side, `step` table units apart) around
/// mapping the extreme value onto `table[0]`; `table[N - 1]` gets one try.
pub(crate) fn table_scale<const N: usize>(
    x: &[f32],
    w: &[f32],
    table: &[f32; N],
    ntry: i32,
    step: f32,
) -> f32 {
    let maxv = signed_absmax(x);
    if maxv == 0.0 {
        return 0.0;
    }
    // Nearest entry = table[0] + the steps whose midpoint lies below v. Entry 0
    // is a dummy (midpoint -inf, step 0) so every array has length N; the loop
    // over 8 values at a time is branch-free and vectorises.
    let mut mids = [f32::NEG_INFINITY; N];
    let mut steps = [0.0f32; N];
    for i in 1..N {
        mids[i] = 0.5 * (table[i - 1] + table[i]);
        steps[i] = table[i] - table[i - 1];
    }
    let fit = |iscale: f32| -> Option<(f64, f64)> {
        let (sqx, sq2) = table_fit(x, w, iscale, table[0], &mids, &steps);
        (sq2 > 0.0).then(|| (sqx * sqx / sq2, sqx / sq2))
    };
    let (mut best_score, mut best_scale) = (-1.0f64, 0.0f64);
    for (anchor, tries) in [(table[0], ntry), (table[N - 1], 0)] {
        for k in -tries..=tries {
            let target = anchor + anchor.signum() * step * k as f32;
            if let Some((score, scale)) = fit(target / maxv) {
                if score > best_score {
                    (best_score, best_scale) = (score, scale);
                }
            }
        }
    }
    for _ in 0..4 {
        if best_scale == 0.0 || !best_scale.is_finite() {
            break;
        }
        match fit((1.0 / best_scale) as f32) {
            Some((score, scale)) if score > best_score * (1.0 + 1e-12) => {
                (best_score, best_scale) = (score, scale)
            }
            _ => break,
        }
    }
    finite_or_zero(best_scale as f32)
}

/// Weighted sums `(sum w*q*x, sum w*q*q)` for table codes of `iscale * x`
/// (see [`table_scale`] for `mids` / `steps`).
fn table_fit<const N: usize>(
    x: &[f32],
    w: &[f32],
    iscale: f32,
    t0: f32,
    mids: &[f32; N],
    steps: &[f32; N],
) -> (f64, f64) {
    let (mut sqx, mut sq2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut lanes = |xs: &[f32; LANES], ws: &[f32; LANES]| {
        let mut v = [0.0f32; LANES];
        let mut q = [t0; LANES];
        for k in 0..LANES {
            v[k] = iscale * xs[k];
        }
        for i in 0..N {
            for k in 0..LANES {
                let up = (v[k] > mids[i]) as u32 as f32;
                q[k] += up * steps[i];
            }
        }
        for k in 0..LANES {
            sqx[k] += ws[k] * q[k] * xs[k];
            sq2[k] += ws[k] * q[k] * q[k];
        }
    };
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        lanes(xs.try_into().unwrap(), ws.try_into().unwrap());
    }
    if !xr.is_empty() {
        // Zero-padded tail: padded weights are 0 so they add nothing.
        let (mut xs, mut ws) = ([0.0f32; LANES], [0.0f32; LANES]);
        xs[..xr.len()].copy_from_slice(xr);
        ws[..wr.len()].copy_from_slice(wr);
        lanes(&xs, &ws);
    }
    (lane_sum(sqx), lane_sum(sq2))
}

/// Call `f(lane, x_i, w_i)` for every element, lane = i % LANES, in index order.
/// Written as whole chunks so the compiler can keep the lanes in registers.
#[inline(always)]
pub(crate) fn for_lanes(x: &[f32], w: &[f32], mut f: impl FnMut(usize, f32, f32)) {
    let mut xc = x.chunks_exact(LANES);
    let mut wc = w.chunks_exact(LANES);
    for (xs, ws) in (&mut xc).zip(&mut wc) {
        for k in 0..LANES {
            f(k, xs[k], ws[k]);
        }
    }
    for (k, (&v, &wi)) in xc.remainder().iter().zip(wc.remainder()).enumerate() {
        f(k, v, wi);
    }
}

#[inline]
fn finite_or_zero(v: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_scale_is_exact_on_grid_points() {
        let x: Vec<f32> = (-8..8).map(|i| i as f32 * 0.25).collect();
        let w = vec![1.0; x.len()];
        let s = symmetric_scale(&x, &w, -8, 7, 9, 0.1);
        assert!((s.abs() - 0.25).abs() < 1e-6, "{s}");
    }

    #[test]
    fn affine_scale_recovers_a_shifted_grid() {
        let x: Vec<f32> = (0..16).map(|i| -1.0 + i as f32 * 0.5).collect();
        let w = vec![1.0; x.len()];
        let (s, o) = affine_scale(&x, &w, 15, 10, 0.1, true);
        assert!((s - 0.5).abs() < 1e-6 && (o + 1.0).abs() < 1e-6, "{s} {o}");
    }

    #[test]
    fn table_lookup_picks_the_nearest_entry() {
        let t = [-2.0, -1.0, 0.5, 3.0];
        assert_eq!(nearest_in_table(&t, -5.0), 0);
        assert_eq!(nearest_in_table(&t, -0.3), 1);
        assert_eq!(nearest_in_table(&t, 1.0), 2);
        assert_eq!(nearest_in_table(&t, 9.0), 3);
    }

    #[test]
    fn degenerate_blocks_give_zero_scales() {
        let z = [0.0f32; 32];
        let mut w = [0.0f32; 32];
        element_weights(&z, None, &mut w);
        assert!(w.iter().all(|&v| v == 1.0));
        assert_eq!(symmetric_scale(&z, &w, -8, 7, 9, 0.1), 0.0);
        assert_eq!(affine_scale(&z, &w, 15, 10, 0.1, true), (0.0, 0.0));
        assert_eq!(table_scale(&z, &w, &[-1.0, 1.0], 3, 0.1), 0.0);
        let x: Vec<f32> = (0..32)
            .map(|i| [-2.0f32, -1.0, 0.5, 3.0][i % 4] * 0.1)
            .collect();
        let s = table_scale(&x, &[1.0; 32], &[-2.0, -1.0, 0.5, 3.0], 4, 0.1);
        assert!((s - 0.1).abs() < 1e-6, "{s}");
    }
}
