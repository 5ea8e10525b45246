//! TQ1_0 and TQ2_0: 256 ternary weights (-1, 0, 1) times one f16 scale.
//!
//! TQ2_0 (66 bytes): qs[64] with code q+1 of weight e in byte 32*(e/128) + e%32
//! at bit 2*((e%128)/32), then d. TQ1_0 (54 bytes): qs[48], qh[4], d; five
//! (four in qh, top digit 0) base-3 digits per byte stored as ceil(n * 256 / 243), so that
//! the digit k of byte b is ((b * 3^k mod 256) * 3) >> 8.
//!
//! Without importance the encoder reproduces the reference exactly (d = max
//! |x|, q = round half away from zero of x * (1/d)). With importance it picks
//! the best weighted ternary fit exactly: for a fixed scale the optimal
//! nonzero set is the k largest |x|, so it scans k over the sorted block.
//! `ternary_absmean` uses d = (importance-weighted) mean |x| (BitNet b1.58).

use crate::layout::BlockType;
use crate::lowbit_common::{get_f16, put_f16, QK_K};

const TQ1_BYTES: usize = BlockType::TQ1_0.block_bytes();
const TQ2_BYTES: usize = BlockType::TQ2_0.block_bytes();
const TQ1_D: usize = BlockType::TQ1_0.field("d").start;
const TQ2_D: usize = BlockType::TQ2_0.field("d").start;

/// Ternary codes of one block and the scale to store.
fn ternary_block(x: &[f32], imp: Option<&[f32]>, absmean: bool, q: &mut [i8; QK_K]) -> f32 {
    let d = if absmean {
        absmean_scale(x, imp)
    } else if let Some(w) = imp.filter(|w| w.iter().any(|&v| v > 0.0)) {
        best_weighted_scale(x, w)
    } else {
        x.iter().fold(0f32, |m, v| m.max(v.abs()))
    };
    // code with the scale the decoder will see when it is not the exact reference path
    let d_code = if absmean || imp.is_some() { crate::half::round_f16(d.min(65504.0)) } else { d };
    let id = if d_code == 0.0 { 0.0 } else { 1.0 / d_code };
    for (qi, &xi) in q.iter_mut().zip(x) {
        let v = (xi * id).round();
        *qi = if v.is_nan() { 0 } else { v.clamp(-1.0, 1.0) as i8 };
    }
    d
}

fn absmean_scale(x: &[f32], imp: Option<&[f32]>) -> f32 {
    let (mut s1, mut s0) = (0f64, 0f64);
    for (i, &xi) in x.iter().enumerate() {
        let wi = imp.map_or(1.0, |w| w[i] as f64);
        s1 += wi * xi.abs() as f64;
        s0 += wi;
    }
    if s0 > 0.0 {
        (s1 / s0) as f32
    } else {
        (x.iter().map(|v| v.abs() as f64).sum::<f64>() / x.len() as f64) as f32
    }
}

/// argmax over k of (sum_{top k} w|x|)^2 / sum_{top k} w; returns that ratio's scale.
fn best_weighted_scale(x: &[f32], w: &[f32]) -> f32 {
    let mut order = [0u16; QK_K];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u16;
    }
    // total order (|x| descending, then index) keeps the result deterministic
    order.sort_unstable_by(|&a, &b| {
        x[b as usize].abs().total_cmp(&x[a as usize].abs()).then(a.cmp(&b))
    });
    let (mut s1, mut s0, mut best_gain, mut best_d) = (0f64, 0f64, -1f64, 0f64);
    for &i in &order {
        let (xi, wi) = (x[i as usize].abs() as f64, w[i as usize] as f64 + 1e-30);
        s1 += wi * xi;
        s0 += wi;
        let gain = s1 * s1 / s0;
        if gain > best_gain {
            best_gain = gain;
            best_d = s1 / s0;
        }
    }
    best_d as f32
}

pub(crate) fn encode_tq2_0(src: &[f32], importance: Option<&[f32]>, opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let mut q = [0i8; QK_K];
    for (b, (x, out)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(TQ2_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        let d = ternary_block(x, imp, opts.ternary_absmean, &mut q);
        out.fill(0);
        for (e, &qe) in q.iter().enumerate() {
            out[32 * (e / 128) + e % 32] |= ((qe + 1) as u8) << (2 * ((e % 128) / 32));
        }
        put_f16(&mut out[TQ2_D..], d);
    }
}

pub(crate) fn decode_tq2_0(src: &[u8], dst: &mut [f32]) {
    for (blk, out) in src.chunks_exact(TQ2_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = get_f16(&blk[TQ2_D..]);
        for (e, o) in out.iter_mut().enumerate() {
            let code = (blk[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            *o = d * (code as i32 - 1) as f32;
        }
    }
}

/// (byte, digit) of weight e in TQ1_0: digit k is weighted 3^(4-k) when packing.
#[inline]
fn tq1_pos(e: usize) -> (usize, usize) {
    match e {
        0..=159 => (e % 32, e / 32),
        160..=239 => (32 + (e - 160) % 16, (e - 160) / 16),
        _ => (48 + (e - 240) % 4, (e - 240) / 4),
    }
}

const POW3: [u16; 5] = [1, 3, 9, 27, 81];

pub(crate) fn encode_tq1_0(src: &[f32], importance: Option<&[f32]>, opts: &crate::EncodeOptions, dst: &mut [u8]) {
    let mut q = [0i8; QK_K];
    let mut acc = [0u16; 52];
    for (b, (x, out)) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(TQ1_BYTES)).enumerate() {
        let imp = importance.map(|v| &v[b * QK_K..(b + 1) * QK_K]);
        let d = ternary_block(x, imp, opts.ternary_absmean, &mut q);
        acc.fill(0);
        for (e, &qe) in q.iter().enumerate() {
            let (byte, k) = tq1_pos(e);
            acc[byte] += (qe + 1) as u16 * POW3[4 - k];
        }
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = ((a * 256 + 242) / 243) as u8;
        }
        put_f16(&mut out[TQ1_D..], d);
    }
}

pub(crate) fn decode_tq1_0(src: &[u8], dst: &mut [f32]) {
    for (blk, out) in src.chunks_exact(TQ1_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = get_f16(&blk[TQ1_D..]);
        for (e, o) in out.iter_mut().enumerate() {
            let (byte, k) = tq1_pos(e);
            let v = blk[byte].wrapping_mul(POW3[k] as u8) as u16;
            *o = d * (((v * 3) >> 8) as i32 - 1) as f32;
        }
    }
}
