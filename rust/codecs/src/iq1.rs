//! IQ1_S (1.5625 bpw) and IQ1_M (1.75 bpw): 8-weight points of a 2048-entry
//! ternary grid plus an offset delta = ±1/8, times odd multiples of d.
//!
//! IQ1_S (50 bytes): d f16, qs[32] (low 8 bits of the grid indices), qh[8]
//! u16 per 32-weight group: bits 3k..3k+2 high index bits of point k, bits
//! 12..14 scale l, bit 15 delta sign. Weight = d (2l+1) (grid + delta).
//! IQ1_M (56 bytes): qs[32], qh[16] (one nibble per point: 3 high index bits,
//! bit 3 delta sign; byte 2g+h holds the two points of half h of group g),
//! scales[4] u16: 3-bit scale of 16-weight unit u at bits 3(u%4) of word u/4,
//! and the f16 d split over the top nibbles of the four words (word i holds
//! bits 4i..4i+3).
//!
//! Encoding: per unit (IQ1_S: 32 weights with one delta; IQ1_M: 16 weights,
//! delta per 8) a scan of candidate scales; at each scale every 8 weights
//! take the grid point nearest under the weighted error (the rounded ternary
//! vector when it is on the grid, else its precomputed nearest grid points),
//! then least-squares refits of the scale. The block scale d is chosen to fit
//! the unit scales onto the odd multiples, and each unit then re-picks its
//! multiple and points exactly.

use crate::half::f16_to_f32;
use crate::iq_grids::{ternary_grid, ternary_key, TernaryGrid};
use crate::layout::BlockType;
use crate::simd::multiversion;
use crate::lowbit_common::{f16_finite, get_f16, prepare_block, put_f16, round_clamp, QK_K};

const DELTA: f32 = 0.125;
const S_BYTES: usize = BlockType::IQ1_S.block_bytes();
const M_BYTES: usize = BlockType::IQ1_M.block_bytes();
const S_QH: usize = BlockType::IQ1_S.field("qh").start;
const M_SCALES: usize = BlockType::IQ1_M.field("scales").start;

#[derive(Clone, Copy, Default)]
struct Pick {
    idx: u16,
    neg: bool,
}

#[inline(always)]
fn point_err(g: &[f32; 8], x: &[f32], w: &[f32], s: f32, delta: f32) -> f32 {
    let mut e = 0f32;
    for i in 0..8 {
        let r = x[i] - s * (g[i] + delta);
        e += w[i] * r * r;
    }
    e
}

/// Best grid point for 8 weights at scale s and offset delta: (index, error).
#[inline(always)]
fn best_point(tg: &TernaryGrid, x: &[f32], w: &[f32], s: f32, delta: f32) -> (u16, f32) {
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    let mut t = [0i8; 8];
    for i in 0..8 {
        t[i] = round_clamp(x[i] * inv - delta, -1.0, 1.0) as i8;
    }
    let key = ternary_key(&t);
    let on = tg.on_grid[key];
    if on >= 0 {
        return (on as u16, point_err(&tg.values[on as usize], x, w, s, delta));
    }
    // Eight candidates at a time, one lane each; every lane sums its error in
    // element order (as `point_err` does) and keeps its first minimum; the
    // lanes then merge by value, ties to the earlier candidate: the same
    // pick as one scan of the list, without a branch per candidate.
    let (mut m, mut at) = ([f32::INFINITY; 8], [0u32; 8]);
    let chunks = &tg.chunks[tg.chunk_start[key] as usize..tg.chunk_start[key + 1] as usize];
    for (c, ch) in chunks.iter().enumerate() {
        let mut e = [0f32; 8];
        for i in 0..8 {
            for l in 0..8 {
                let r = x[i] - s * (ch.values[i][l] as f32 + delta);
                e[l] += w[i] * r * r;
            }
        }
        for l in 0..8 {
            let better = (l < ch.len as usize) & (e[l] < m[l]);
            m[l] = if better { e[l] } else { m[l] };
            at[l] = if better { (8 * c + l) as u32 } else { at[l] };
        }
    }
    let (mut best, mut be) = (u32::MAX, f32::INFINITY);
    for l in 0..8 {
        if m[l] < be || (m[l] == be && m[l] < f32::INFINITY && at[l] < best) {
            be = m[l];
            best = at[l];
        }
    }
    if best == u32::MAX {
        return (0, f32::INFINITY);
    }
    (chunks[best as usize / 8].index[best as usize % 8], be)
}

/// Points of one unit at scale s. `shared_delta`: one delta sign for the whole unit.
#[inline(always)]
fn select(tg: &TernaryGrid, x: &[f32], w: &[f32], s: f32, shared_delta: bool, picks: &mut [Pick]) -> f32 {
    let n = picks.len();
    if shared_delta {
        let mut tmp = [Pick::default(); 4];
        let mut best = f32::INFINITY;
        for neg in [false, true] {
            let delta = if neg { -DELTA } else { DELTA };
            let mut e = 0f32;
            for k in 0..n {
                let (idx, ek) = best_point(tg, &x[8 * k..8 * k + 8], &w[8 * k..8 * k + 8], s, delta);
                tmp[k] = Pick { idx, neg };
                e += ek;
            }
            if e < best {
                best = e;
                picks.copy_from_slice(&tmp[..n]);
            }
        }
        best
    } else {
        let mut total = 0f32;
        for (k, p) in picks.iter_mut().enumerate() {
            let (xs, ws) = (&x[8 * k..8 * k + 8], &w[8 * k..8 * k + 8]);
            let (i0, e0) = best_point(tg, xs, ws, s, DELTA);
            let (i1, e1) = best_point(tg, xs, ws, s, -DELTA);
            *p = if e1 < e0 { Pick { idx: i1, neg: true } } else { Pick { idx: i0, neg: false } };
            total += e0.min(e1);
        }
        total
    }
}

/// Least-squares scale for fixed points: (scale, sum w (g+delta)^2).
#[inline(always)]
fn refit(tg: &TernaryGrid, x: &[f32], w: &[f32], picks: &[Pick]) -> (f32, f32) {
    let (mut n, mut d) = (0f32, 0f32);
    for (k, p) in picks.iter().enumerate() {
        let g = &tg.values[p.idx as usize];
        let delta = if p.neg { -DELTA } else { DELTA };
        for i in 0..8 {
            let v = g[i] + delta;
            n += w[8 * k + i] * x[8 * k + i] * v;
            d += w[8 * k + i] * v * v;
        }
    }
    (if d > 0.0 { n / d } else { 0.0 }, d)
}

/// Best scale of one unit and the curvature of its error around it.
#[inline(always)]
fn unit_scale(tg: &TernaryGrid, x: &[f32], w: &[f32], shared: bool, picks: &mut [Pick]) -> (f32, f32) {
    let umax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if umax == 0.0 {
        return (0.0, 0.0);
    }
    let (mut best_s, mut best_e) = (umax, f32::INFINITY);
    for k in 0..10 {
        let s = umax * (0.30 + 0.075 * k as f32);
        let e = select(tg, x, w, s, shared, picks);
        if e < best_e {
            best_e = e;
            best_s = s;
        }
    }
    let mut curv = 0f32;
    for _ in 0..3 {
        select(tg, x, w, best_s, shared, picks);
        let (s, c) = refit(tg, x, w, picks);
        curv = c;
        if !(s > 0.0) {
            break;
        }
        let e = select(tg, x, w, s, shared, picks);
        if e >= best_e {
            break;
        }
        best_e = e;
        best_s = s;
    }
    (best_s, curv)
}

/// Shared encoder core: fills `picks` (one per 8 weights) and the
/// 3-bit multiples `mult` of the returned block scale (normalised units).
#[inline(always)]
fn encode_core(x: &[f32; QK_K], w: &[f32; QK_K], unit: usize, shared: bool,
               snap: &dyn Fn(f32) -> f32, picks: &mut [Pick; 32], mult: &mut [u8]) -> f32 {
    let tg = ternary_grid();
    let n_units = QK_K / unit;
    let per = unit / 8;
    let (mut us, mut uc) = ([0f32; 16], [0f32; 16]);
    for u in 0..n_units {
        let r = u * unit..(u + 1) * unit;
        let (s, c) = unit_scale(tg, &x[r.clone()], &w[r], shared, &mut picks[u * per..(u + 1) * per]);
        us[u] = s;
        uc[u] = c;
    }
    let smax = us.iter().fold(0f32, |m, &v| m.max(v));
    if smax == 0.0 {
        return 0.0;
    }
    // block scale: fit unit scales onto d (2l+1) using the error curvature
    let level = |s: f32, d: f32| ((s / d - 1.0) * 0.5).round().clamp(0.0, 7.0);
    let (mut best_d, mut best_e) = (0f32, f32::INFINITY);
    for f in [1.0f32, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 1.05] {
        let d = snap(smax / 15.0 * f);
        if d <= 0.0 {
            continue;
        }
        let e: f32 = (0..n_units).map(|u| {
            let r = d * (2.0 * level(us[u], d) + 1.0) - us[u];
            uc[u] * r * r
        }).sum();
        if e < best_e {
            best_e = e;
            best_d = d;
        }
    }
    if best_d <= 0.0 {
        return 0.0;
    }
    let mut tmp = [Pick::default(); 4];
    for u in 0..n_units {
        let r = u * unit..(u + 1) * unit;
        let l0 = level(us[u], best_d) as i32;
        let mut be = f32::INFINITY;
        for l in (l0 - 1).max(0)..=(l0 + 1).min(7) {
            let s = best_d * (2 * l + 1) as f32;
            let e = select(tg, &x[r.clone()], &w[r.clone()], s, shared, &mut tmp[..per]);
            if e < be {
                be = e;
                mult[u] = l as u8;
                picks[u * per..(u + 1) * per].copy_from_slice(&tmp[..per]);
            }
        }
    }
    best_d
}

#[inline(always)]
fn snapper(amax: f32) -> impl Fn(f32) -> f32 {
    move |v: f32| (f16_to_f32(f16_finite((v as f64 * amax as f64) as f32)) as f64 / amax as f64) as f32
}

multiversion! {
pub(crate) fn encode_iq1_s(src: &[f32], importance: Option<&[f32]>, _opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let (mut x, mut w) = ([0f32; QK_K], [0f32; QK_K]);
    for (b, (s, out)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(S_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        out.fill(0);
        let amax = prepare_block(s, imp, &mut x, &mut w);
        let mut picks = [Pick::default(); 32];
        let mut mult = [0u8; 8];
        let d = if amax > 0.0 { encode_core(&x, &w, 32, true, &snapper(amax), &mut picks, &mut mult) } else { 0.0 };
        put_f16(&mut out[0..], d * amax);
        for g in 0..8 {
            let mut qh = (mult[g] as u16) << 12;
            if picks[4 * g].neg {
                qh |= 0x8000;
            }
            for k in 0..4 {
                let p = picks[4 * g + k];
                out[2 + 4 * g + k] = p.idx as u8;
                qh |= (p.idx >> 8) << (3 * k);
            }
            out[S_QH + 2 * g..S_QH + 2 + 2 * g].copy_from_slice(&qh.to_le_bytes());
        }
    }
}
}

pub(crate) fn decode_iq1_s(src: &[u8], dst: &mut [f32]) {
    let tg = ternary_grid();
    for (blk, out) in src.chunks_exact(S_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = get_f16(blk);
        for g in 0..8 {
            let qh = u16::from_le_bytes([blk[S_QH + 2 * g], blk[S_QH + 1 + 2 * g]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 == 0 { DELTA } else { -DELTA };
            for k in 0..4 {
                let idx = blk[2 + 4 * g + k] as usize | (((qh >> (3 * k)) & 7) as usize) << 8;
                let gp = &tg.values[idx];
                for i in 0..8 {
                    out[32 * g + 8 * k + i] = dl * (gp[i] + delta);
                }
            }
        }
    }
}

multiversion! {
pub(crate) fn encode_iq1_m(src: &[f32], importance: Option<&[f32]>, _opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let (mut x, mut w) = ([0f32; QK_K], [0f32; QK_K]);
    for (b, (s, out)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(M_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        out.fill(0);
        let amax = prepare_block(s, imp, &mut x, &mut w);
        let mut picks = [Pick::default(); 32];
        let mut mult = [0u8; 16];
        let d = if amax > 0.0 { encode_core(&x, &w, 16, false, &snapper(amax), &mut picks, &mut mult) } else { 0.0 };
        for (k, p) in picks.iter().enumerate() {
            out[k] = p.idx as u8;
            let nib = ((p.idx >> 8) as u8 & 7) | if p.neg { 8 } else { 0 };
            out[32 + k / 2] |= nib << (4 * (k % 2));
        }
        let dbits = f16_finite(d * amax);
        let mut words = [0u16; 4];
        for (u, &m) in mult.iter().enumerate() {
            words[u / 4] |= (m as u16) << (3 * (u % 4));
        }
        for (i, wd) in words.iter_mut().enumerate() {
            *wd |= ((dbits >> (4 * i)) & 0xF) << 12;
            out[M_SCALES + 2 * i..M_SCALES + 2 + 2 * i].copy_from_slice(&wd.to_le_bytes());
        }
    }
}
}

pub(crate) fn decode_iq1_m(src: &[u8], dst: &mut [f32]) {
    let tg = ternary_grid();
    for (blk, out) in src.chunks_exact(M_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let mut words = [0u16; 4];
        let mut dbits = 0u16;
        for (i, wd) in words.iter_mut().enumerate() {
            *wd = u16::from_le_bytes([blk[M_SCALES + 2 * i], blk[M_SCALES + 1 + 2 * i]]);
            dbits |= (*wd >> 12) << (4 * i);
        }
        let d = f16_to_f32(dbits);
        for k in 0..32 {
            let u = k / 2;
            let dl = d * (2 * ((words[u / 4] >> (3 * (u % 4))) & 7) + 1) as f32;
            let nib = (blk[32 + k / 2] >> (4 * (k % 2))) & 0xF;
            let idx = blk[k] as usize | ((nib & 7) as usize) << 8;
            let delta = if nib & 8 == 0 { DELTA } else { -DELTA };
            let gp = &tg.values[idx];
            for i in 0..8 {
                out[8 * k + i] = dl * (gp[i] + delta);
            }
        }
    }
}
