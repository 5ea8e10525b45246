//! IQ2_XXS: 2.0625 bits per weight.
//!
//! Block (66 bytes): d f16, then per 32-weight group two little-endian u32:
//! the first holds four grid indices (one per 8 weights, 256-entry grid of
//! magnitudes 8/25/43), the second four 7-bit sign indices (bits 7k..7k+6,
//! the 8th sign is the even-parity bit) and a 4-bit scale ls in bits 28..31.
//! Weight = d * (0.5 + ls) / 4 * grid * sign.
//!
//! Encoding is an exact grid search: for 8 weights with fixed signs, the
//! weighted error of grid point p at scale s is const - 2 s D1[p] + s^2 D2[p],
//! where D1, D2 do not depend on s. They are computed once per 8 weights (an
//! odd count of negative signs makes the cheapest element flip, which D1
//! accounts for), so every scale candidate costs 3 flops per grid point.

use crate::iq_grids::{iq2xxs_columns, iq2xxs_grid, KSIGNS};
use crate::layout::BlockType;
use crate::simd::multiversion;
use crate::lowbit_common::{get_f16, prepare_block, put_f16, QK_K};
use crate::half::f16_to_f32;
use crate::lowbit_common::f16_finite;

const BYTES: usize = BlockType::IQ2_XXS.block_bytes();
const SUBS: usize = QK_K / 8;

/// Per-row scratch (allocated once per row, reused for every block).
struct Scratch {
    d1: Vec<[f32; 256]>,
    d2: Vec<[f32; 256]>,
}

#[inline(always)]
fn snap(v: f32, amax: f32) -> f32 {
    (f16_to_f32(f16_finite((v as f64 * amax as f64) as f32)) as f64 / amax as f64) as f32
}

/// Min over grid points of s^2 D2 - 2 s D1 (lane-wise so it vectorises).
#[inline(always)]
fn sub_min(d1: &[f32; 256], d2: &[f32; 256], s: f32) -> f32 {
    let (a, b) = (s * s, -2.0 * s);
    let mut m = [f32::INFINITY; 8];
    for (c1, c2) in d1.chunks_exact(8).zip(d2.chunks_exact(8)) {
        for l in 0..8 {
            let v = a * c2[l] + b * c1[l];
            if v < m[l] {
                m[l] = v;
            }
        }
    }
    m.iter().fold(f32::INFINITY, |x, &y| if y < x { y } else { x })
}

/// The first grid point (lowest index) where s^2 D2 - 2 s D1 is least.
///
/// Eight lanes keep their own first minimum (points 8c + l); the lanes are
/// then merged by value, ties to the lower index: the same point as one
/// scan in index order, but the scan vectorises.
#[inline(always)]
fn sub_argmin(d1: &[f32; 256], d2: &[f32; 256], s: f32) -> usize {
    let (a, b) = (s * s, -2.0 * s);
    let mut m = [f32::INFINITY; 8];
    let mut at = [0u32; 8];
    for (c, (c1, c2)) in d1.chunks_exact(8).zip(d2.chunks_exact(8)).enumerate() {
        for l in 0..8 {
            let v = a * c2[l] + b * c1[l];
            let better = v < m[l];
            m[l] = if better { v } else { m[l] };
            at[l] = if better { (8 * c + l) as u32 } else { at[l] };
        }
    }
    let (mut best, mut bv) = (0u32, f32::INFINITY);
    for l in 0..8 {
        if m[l] < bv || (m[l] == bv && at[l] < best) {
            bv = m[l];
            best = at[l];
        }
    }
    best as usize
}

#[inline(always)]
fn group_err(sc: &Scratch, g: usize, s: f32) -> f32 {
    (4 * g..4 * g + 4).map(|k| sub_min(&sc.d1[k], &sc.d2[k], s)).sum()
}

/// Best scale of group g (normalised units) by candidate scan + refits.
#[inline(always)]
fn group_scale(sc: &Scratch, g: usize, gmax: f32) -> f32 {
    if gmax == 0.0 {
        return 0.0;
    }
    let (mut best_s, mut best_e) = (0f32, 0f32);
    // the largest weight lands on 8 (flat groups) up to past 43 (clipped outliers)
    for c in [8.0f32, 12.0, 16.0, 20.0, 23.0, 26.0, 29.0, 32.0, 35.0, 38.0, 41.0, 44.0, 48.0, 53.0] {
        let s = gmax / c;
        let e = group_err(sc, g, s);
        if e < best_e {
            best_e = e;
            best_s = s;
        }
    }
    for _ in 0..3 {
        let (mut n, mut dd) = (0f32, 0f32);
        for k in 4 * g..4 * g + 4 {
            let p = sub_argmin(&sc.d1[k], &sc.d2[k], best_s);
            n += sc.d1[k][p];
            dd += sc.d2[k][p];
        }
        if !(dd > 0.0 && n > 0.0) {
            break;
        }
        let s = n / dd;
        let e = group_err(sc, g, s);
        if e >= best_e {
            break;
        }
        best_e = e;
        best_s = s;
    }
    best_s
}

/// Best 4-bit group scale index for block scale d, and its error.
#[inline(always)]
fn best_ls(sc: &Scratch, g: usize, s: f32, d: f32) -> (u32, f32) {
    let l = (s * 4.0 / d - 0.5).clamp(0.0, 15.0);
    let (lo, hi) = (l.floor() as u32, l.ceil() as u32);
    let e_lo = group_err(sc, g, d * (0.5 + lo as f32) * 0.25);
    if hi == lo {
        return (lo, e_lo);
    }
    let e_hi = group_err(sc, g, d * (0.5 + hi as f32) * 0.25);
    if e_hi < e_lo { (hi, e_hi) } else { (lo, e_lo) }
}

multiversion! {
pub(crate) fn encode_iq2_xxs(src: &[f32], importance: Option<&[f32]>, _opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let mut sc = Scratch { d1: vec![[0f32; 256]; SUBS], d2: vec![[0f32; 256]; SUBS] };
    let (mut x, mut w) = ([0f32; QK_K], [0f32; QK_K]);
    for (b, (s, d)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        encode_block(s, imp, &mut x, &mut w, &mut sc, d);
    }
}
}

#[inline(always)]
fn encode_block(src: &[f32], imp: Option<&[f32]>, x: &mut [f32; QK_K], w: &mut [f32; QK_K], sc: &mut Scratch, dst: &mut [u8]) {
    dst.fill(0);
    let amax = prepare_block(src, imp, x, w);
    if amax == 0.0 {
        return;
    }
    let grid = iq2xxs_grid();
    let cols = iq2xxs_columns();
    for k in 0..SUBS {
        let xs = &x[8 * k..8 * k + 8];
        let ws = &w[8 * k..8 * k + 8];
        let mut negs = 0;
        for &v in xs {
            negs += (v < 0.0) as u32;
        }
        // Points side by side, elements in order: each point's sums are
        // accumulated exactly as a loop over its eight elements would.
        let (a, b) = (&mut sc.d1[k], &mut sc.d2[k]);
        let mut m = [f32::INFINITY; 256];
        a.fill(0.0);
        b.fill(0.0);
        for i in 0..8 {
            let wx = ws[i] * xs[i].abs();
            let (gv, gq) = (&cols.values[i], &cols.squares[i]);
            for p in 0..256 {
                let t = wx * gv[p];
                a[p] += t;
                b[p] += ws[i] * gq[p];
                m[p] = if t < m[p] { t } else { m[p] };
            }
        }
        if negs % 2 == 1 {
            // an odd count of negative signs: the cheapest element flips
            for p in 0..256 {
                a[p] -= 2.0 * m[p];
            }
        }
    }
    let mut gs = [0f32; 8];
    for (g, s) in gs.iter_mut().enumerate() {
        let gmax = x[32 * g..32 * g + 32].iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = group_scale(sc, g, gmax);
    }
    let smax = gs.iter().fold(0f32, |m, &v| m.max(v));
    if smax == 0.0 {
        return;
    }
    // block scale: the candidate with the least total error after choosing each ls
    let d0 = smax * 4.0 / 15.5;
    let (mut best_d, mut best_e, mut best_l) = (0f32, f32::INFINITY, [0u32; 8]);
    for f in [1.0f32, 0.97, 0.94, 0.91, 0.88, 0.85, 1.03] {
        let d = snap(d0 * f, amax);
        if d <= 0.0 {
            continue;
        }
        let mut ls = [0u32; 8];
        let mut e = 0f32;
        for g in 0..8 {
            let (l, eg) = best_ls(sc, g, gs[g], d);
            ls[g] = l;
            e += eg;
        }
        if e < best_e {
            best_e = e;
            best_d = d;
            best_l = ls;
        }
    }
    if best_d <= 0.0 {
        return; // scale underflows f16: the block decodes to zero
    }
    let grid_ref = grid;
    for g in 0..8 {
        let s = best_d * (0.5 + best_l[g] as f32) * 0.25;
        let mut aux1 = best_l[g] << 28;
        for k in 0..4 {
            let sub = 4 * g + k;
            let p = sub_argmin(&sc.d1[sub], &sc.d2[sub], s);
            dst[2 + 8 * g + k] = p as u8;
            let base = 8 * sub;
            let mut mask = 0u32;
            let (mut flip, mut fv) = (0usize, f32::INFINITY);
            for i in 0..8 {
                if x[base + i] < 0.0 {
                    mask |= 1 << i;
                }
                let t = w[base + i] * x[base + i].abs() * grid_ref[p][i];
                if t < fv {
                    fv = t;
                    flip = i;
                }
            }
            if mask.count_ones() % 2 == 1 {
                mask ^= 1 << flip;
            }
            aux1 |= (mask & 0x7F) << (7 * k);
        }
        dst[2 + 8 * g + 4..2 + 8 * g + 8].copy_from_slice(&aux1.to_le_bytes());
    }
    put_f16(&mut dst[0..], best_d * amax);
}

pub(crate) fn decode_iq2_xxs(src: &[u8], dst: &mut [f32]) {
    let grid = iq2xxs_grid();
    for (blk, out) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = get_f16(blk);
        for g in 0..8 {
            let q = &blk[2 + 8 * g..2 + 8 * g + 8];
            let aux1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for k in 0..4 {
                let gp = &grid[q[k] as usize];
                let signs = KSIGNS[((aux1 >> (7 * k)) & 0x7F) as usize];
                for i in 0..8 {
                    let v = db * gp[i];
                    out[32 * g + 8 * k + i] = if signs >> i & 1 == 1 { -v } else { v };
                }
            }
        }
    }
}
