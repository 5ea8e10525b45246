//! Q2_K and Q3_K: 256-weight super-blocks of sixteen 16-weight sub-blocks.
//!
//! Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64]
//! (2-bit codes), d f16, dmin f16; w = d*sc*q - dmin*m.
//! Q3_K (110 bytes): hmask[32], qs[64] (low 2 bits), scales[12] (6-bit signed,
//! offset 32), d f16; w = d*sc*(q - 4 if the hmask bit is clear).
//! Code of weight e sits in qs byte 32*(e/128) + e%32 at bit 2*((e%128)/32);
//! its Q3_K high bit is bit e/32 of hmask byte e%32.
//!
//! Encoding: a weighted fit per sub-block, a weighted fit of the sixteen
//! sub-scales onto the 4/6-bit grid, then alternating re-rounding of the codes
//! and least-squares refits of the f16 super-scales (the stored values).

use crate::lowbit_common::{fit_affine_16x16, fit_symmetric, get_f16, prepare_block, put_f16, round_codes, QK_K};
use crate::half::{f16_to_f32};
use crate::layout::BlockType;
use crate::simd::multiversion;
use crate::lowbit_common::{f16_finite, round_clamp};

const Q2K_BYTES: usize = BlockType::Q2_K.block_bytes();
const Q3K_BYTES: usize = BlockType::Q3_K.block_bytes();
const Q2K_D: usize = BlockType::Q2_K.field("d").start;
const Q2K_DMIN: usize = BlockType::Q2_K.field("dmin").start;
const Q3K_D: usize = BlockType::Q3_K.field("d").start;

#[inline(always)]
fn code_pos(e: usize) -> (usize, u32) {
    (32 * (e / 128) + e % 32, 2 * ((e % 128) / 32) as u32)
}

/// The value the decoder will see for scale `v` (normalised units) of a
/// block whose inputs were divided by `amax`.
#[inline(always)]
fn snap(v: f32, amax: f32) -> f32 {
    (f16_to_f32(f16_finite((v as f64 * amax as f64) as f32)) as f64 / amax as f64) as f32
}

multiversion! {
pub(crate) fn encode_q2_k(src: &[f32], importance: Option<&[f32]>, _opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let (mut x, mut w) = ([0f32; QK_K], [0f32; QK_K]);
    for (b, (s, d)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q2K_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        encode_q2_k_block(s, imp, &mut x, &mut w, d);
    }
}
}

#[inline(always)]
fn requant_q2(x: &[f32], w: &[f32], d: f32, dmin: f32, sc: &[i8; 16], mn: &[i8; 16], q: &mut [u8; QK_K]) -> f32 {
    // element errors first (vectorises), then their sum in element order
    let mut we = [0f32; QK_K];
    for j in 0..16 {
        let (a, b) = (d * sc[j] as f32, -dmin * mn[j] as f32);
        let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
        for i in j * 16..j * 16 + 16 {
            let qi = round_clamp((x[i] - b) * inv, 0.0, 3.0);
            q[i] = qi as u8;
            let e = x[i] - a * qi - b;
            we[i] = w[i] * e * e;
        }
    }
    we.iter().fold(0f32, |s, &v| s + v)
}

#[inline(always)]
fn encode_q2_k_block(src: &[f32], imp: Option<&[f32]>, x: &mut [f32; QK_K], w: &mut [f32; QK_K], dst: &mut [u8]) {
    dst.fill(0);
    let amax = prepare_block(src, imp, x, w);
    if amax == 0.0 {
        return;
    }
    let mut q = [0u8; QK_K];
    let (mut a, mut m, mut wa, mut wm) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    let (fa, fb) = fit_affine_16x16(x, w, 3, &mut q);
    for j in 0..16 {
        let r = j * 16..j * 16 + 16;
        a[j] = fa[j].max(0.0);
        m[j] = -fb[j];
        for i in r {
            wa[j] += w[i] * (q[i] as f32) * (q[i] as f32);
            wm[j] += w[i];
        }
    }
    let (mut sc, mut mn) = ([0i8; 16], [0i8; 16]);
    let d0 = snap(fit_symmetric(&a, &wa, 0, 15, &mut sc), amax);
    let m0 = snap(fit_symmetric(&m, &wm, 0, 15, &mut mn), amax);
    let (mut d, mut dmin) = (d0, m0);
    let mut best_err = requant_q2(x, w, d, dmin, &sc, &mn, &mut q);
    let mut best_q = q;
    // least-squares refit of (d, dmin) for fixed integer scales and codes
    for _ in 0..2 {
        let (mut suu, mut suv, mut svv, mut sxu, mut sxv) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for i in 0..QK_K {
            let u = sc[i / 16] as f32 * best_q[i] as f32;
            let v = mn[i / 16] as f32;
            suu += w[i] * u * u;
            suv += w[i] * u * v;
            svv += w[i] * v * v;
            sxu += w[i] * x[i] * u;
            sxv += w[i] * x[i] * v;
        }
        // minimise sum w (x - d u + e v)^2
        let det = suu * svv - suv * suv;
        if !(det > 1e-12 * suu * svv) {
            break;
        }
        let nd = snap((sxu * svv - sxv * suv) / det, amax);
        let ne = snap((sxu * suv - sxv * suu) / det, amax);
        let err = requant_q2(x, w, nd, ne, &sc, &mn, &mut q);
        if err >= best_err {
            break;
        }
        best_err = err;
        best_q = q;
        d = nd;
        dmin = ne;
    }
    for j in 0..16 {
        dst[j] = (sc[j] as u8) | ((mn[j] as u8) << 4);
    }
    for (e, &qe) in best_q.iter().enumerate() {
        let (byte, shift) = code_pos(e);
        dst[16 + byte] |= qe << shift;
    }
    put_f16(&mut dst[Q2K_D..], d * amax);
    put_f16(&mut dst[Q2K_DMIN..], dmin * amax);
}

pub(crate) fn decode_q2_k(src: &[u8], dst: &mut [f32]) {
    for (blk, out) in src.chunks_exact(Q2K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (get_f16(&blk[Q2K_D..]), get_f16(&blk[Q2K_DMIN..]));
        for (e, o) in out.iter_mut().enumerate() {
            let s = blk[e / 16];
            let (byte, shift) = code_pos(e);
            let qv = ((blk[16 + byte] >> shift) & 3) as f32;
            *o = d * (s & 0xF) as f32 * qv - dmin * (s >> 4) as f32;
        }
    }
}

multiversion! {
pub(crate) fn encode_q3_k(src: &[f32], importance: Option<&[f32]>, _opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let (mut x, mut w) = ([0f32; QK_K], [0f32; QK_K]);
    for (b, (s, d)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q3K_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        encode_q3_k_block(s, imp, &mut x, &mut w, d);
    }
}
}

#[inline(always)]
fn requant_q3(x: &[f32], w: &[f32], d: f32, sc: &[i8; 16], q: &mut [i8; QK_K]) -> f32 {
    let mut we = [0f32; QK_K];
    for j in 0..16 {
        let a = d * sc[j] as f32;
        let r = j * 16..j * 16 + 16;
        round_codes(&x[r.clone()], a, -4, 3, &mut q[r.clone()]);
        for i in r {
            let e = x[i] - a * q[i] as f32;
            we[i] = w[i] * e * e;
        }
    }
    we.iter().fold(0f32, |s, &v| s + v)
}

#[inline(always)]
fn encode_q3_k_block(src: &[f32], imp: Option<&[f32]>, x: &mut [f32; QK_K], w: &mut [f32; QK_K], dst: &mut [u8]) {
    dst.fill(0);
    let amax = prepare_block(src, imp, x, w);
    let mut q = [0i8; QK_K];
    let mut sc = [0i8; 16];
    let mut d = 0f32;
    if amax > 0.0 {
        let (mut s, mut ws) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let r = j * 16..j * 16 + 16;
            s[j] = fit_symmetric(&x[r.clone()], &w[r.clone()], -4, 3, &mut q[r.clone()]);
            ws[j] = r.map(|i| w[i] * (q[i] as f32) * (q[i] as f32)).sum();
        }
        d = snap(fit_symmetric(&s, &ws, -32, 31, &mut sc), amax);
        let mut best_err = requant_q3(x, w, d, &sc, &mut q);
        let mut best_q = q;
        for _ in 0..2 {
            let (mut sxu, mut suu) = (0f32, 0f32);
            for i in 0..QK_K {
                let u = sc[i / 16] as f32 * best_q[i] as f32;
                sxu += w[i] * x[i] * u;
                suu += w[i] * u * u;
            }
            if suu <= 0.0 {
                break;
            }
            let nd = snap(sxu / suu, amax);
            let err = requant_q3(x, w, nd, &sc, &mut q);
            if err >= best_err {
                break;
            }
            best_err = err;
            best_q = q;
            d = nd;
        }
        q = best_q;
    }
    for (e, &qe) in q.iter().enumerate() {
        let (byte, shift) = code_pos(e);
        let v = (qe + 4) as u8;
        dst[32 + byte] |= (v & 3) << shift;
        if v >= 4 {
            dst[e % 32] |= 1 << (e / 32);
        }
    }
    for (i, &s) in sc.iter().enumerate() {
        let v = (s as i32 + 32) as u8;
        dst[96 + i % 8] |= (v & 0xF) << (4 * (i / 8));
        dst[96 + 8 + i % 4] |= (v >> 4) << (2 * (i / 4));
    }
    put_f16(&mut dst[Q3K_D..], d * amax);
}

pub(crate) fn decode_q3_k(src: &[u8], dst: &mut [f32]) {
    for (blk, out) in src.chunks_exact(Q3K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = get_f16(&blk[Q3K_D..]);
        let mut dl = [0f32; 16];
        for (i, v) in dl.iter_mut().enumerate() {
            let lo = (blk[96 + i % 8] >> (4 * (i / 8))) & 0xF;
            let hi = (blk[104 + i % 4] >> (2 * (i / 4))) & 3;
            *v = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        }
        for (e, o) in out.iter_mut().enumerate() {
            let (byte, shift) = code_pos(e);
            let low = ((blk[32 + byte] >> shift) & 3) as i32;
            let high = (blk[e % 32] >> (e / 32)) & 1;
            let qv = if high == 1 { low } else { low - 4 };
            *o = dl[e / 16] * qv as f32;
        }
    }
}
