//! The 32-weight "legacy" blocks: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.
//!
//! Without importance the encoders reproduce the `gguf` package's reference
//! (`gguf.quants.quantize`) byte for byte: the same f32 operations in the same
//! order (`d = max / -8`, `id = 1 / d`, `trunc(x * id + 8.5)`, ...) and `d`
//! rounded to f16 only when stored. With importance they run a weighted scale
//! search ([`crate::qsearch`]) and round the codes against the stored f16
//! scale, so the bytes differ from the reference but the weighted error is lower.
//!
//! One deviation: a scale beyond the f16 range is stored as ±65504 instead of
//! ±inf so the decoded tensor stays finite (the reference would write inf).

use crate::half::{f16_to_f32, f32_to_f16};
use crate::qsearch::{affine_scale, element_weights, round_clamp, signed_absmax, symmetric_scale};
use crate::layout::{shared_block_weights, BlockType};
use crate::EncodeOptions;

/// Weights per block of every type here (from the layout table).
const QK: usize = shared_block_weights(&[
    BlockType::Q8_0,
    BlockType::Q4_0,
    BlockType::Q4_1,
    BlockType::Q5_0,
    BlockType::Q5_1,
]);
const Q8_0_BYTES: usize = BlockType::Q8_0.block_bytes();
const Q4_0_BYTES: usize = BlockType::Q4_0.block_bytes();
const Q4_1_BYTES: usize = BlockType::Q4_1.block_bytes();
const Q5_0_BYTES: usize = BlockType::Q5_0.block_bytes();
const Q5_1_BYTES: usize = BlockType::Q5_1.block_bytes();

/// f16 bits of `v`, saturated to the largest finite half.
#[inline]
pub(crate) fn f16_sat(v: f32) -> u16 {
    f32_to_f16(v.clamp(-65504.0, 65504.0))
}

#[inline]
fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

#[inline]
fn write_f16(dst: &mut [u8], bits: u16) {
    dst[..2].copy_from_slice(&bits.to_le_bytes());
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Low nibbles: weight j in the low half of byte j, weight j + 16 in the high half.
fn pack_nibbles(q: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
}

fn unpack_nibbles(qs: &[u8], q: &mut [u8; QK]) {
    for j in 0..QK / 2 {
        q[j] = qs[j] & 0x0f;
        q[j + QK / 2] = qs[j] >> 4;
    }
}

/// Fifth bits of 32 codes as a little-endian u32 (bit i = bit 4 of code i).
fn pack_high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut h = 0u32;
    for (i, &v) in q.iter().enumerate() {
        h |= (((v >> 4) & 1) as u32) << i;
    }
    h.to_le_bytes()
}

fn unpack_five_bits(qh: &[u8], qs: &[u8], q: &mut [u8; QK]) {
    unpack_nibbles(qs, q);
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (i, v) in q.iter_mut().enumerate() {
        *v |= (((h >> i) & 1) as u8) << 4;
    }
}

fn block_weights(x: &[f32], importance: Option<&[f32]>, b: usize) -> Option<[f32; QK]> {
    importance.map(|imp| {
        let mut w = [0.0f32; QK];
        element_weights(x, Some(&imp[b * QK..(b + 1) * QK]), &mut w);
        w
    })
}

/// Codes `round(x / d) + bias` clamped to `[0, 2 * bias - 1]` against the stored scale.
fn symmetric_codes(x: &[f32], d: f32, bias: i32, q: &mut [u8; QK]) {
    let id = inverse(d);
    for (c, &v) in q.iter_mut().zip(x) {
        *c = (round_clamp(v * id, -bias, bias - 1) + bias) as u8;
    }
}

// ---------------------------------------------------------------- Q8_0

pub(crate) fn encode_q8_0(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(Q8_0_BYTES))
        .enumerate()
    {
        let (dbits, id) = match block_weights(x, importance, b) {
            None => {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                (f16_sat(d), inverse(d))
            }
            Some(w) => {
                let bits = f16_sat(symmetric_scale(x, &w, -128, 127, 6, 0.25));
                (bits, inverse(f16_to_f32(bits)))
            }
        };
        write_f16(out, dbits);
        for (o, &v) in out[2..].iter_mut().zip(x) {
            *o = round_clamp(v * id, -128, 127) as i8 as u8;
        }
    }
}

pub(crate) fn decode_q8_0(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(blk);
        for (o, &q) in y.iter_mut().zip(&blk[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

// ---------------------------------------------------------------- Q4_0 / Q5_0

/// Shared encoder of Q4_0 (`bias` 8) and Q5_0 (`bias` 16): codes in `[0, 2 * bias)`.
fn encode_symmetric_block(x: &[f32], w: Option<[f32; QK]>, bias: i32, q: &mut [u8; QK]) -> u16 {
    match w {
        None => {
            let d = signed_absmax(x) / -(bias as f32);
            let id = inverse(d);
            let offset = bias as f32 + 0.5;
            for (c, &v) in q.iter_mut().zip(x) {
                *c = ((v * id + offset).trunc() as u8).min((2 * bias - 1) as u8);
            }
            f16_sat(d)
        }
        Some(w) => {
            let bits = f16_sat(symmetric_scale(x, &w, -bias, bias - 1, 9, 0.1));
            symmetric_codes(x, f16_to_f32(bits), bias, q);
            bits
        }
    }
}

pub(crate) fn encode_q4_0(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    let mut q = [0u8; QK];
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(Q4_0_BYTES))
        .enumerate()
    {
        let d = encode_symmetric_block(x, block_weights(x, importance, b), 8, &mut q);
        write_f16(out, d);
        pack_nibbles(&q, &mut out[2..]);
    }
}

pub(crate) fn decode_q4_0(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for (blk, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(blk);
        unpack_nibbles(&blk[2..], &mut q);
        for (o, &c) in y.iter_mut().zip(&q) {
            *o = d * (c as i32 - 8) as f32;
        }
    }
}

pub(crate) fn encode_q5_0(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    let mut q = [0u8; QK];
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(Q5_0_BYTES))
        .enumerate()
    {
        let d = encode_symmetric_block(x, block_weights(x, importance, b), 16, &mut q);
        write_f16(out, d);
        out[2..6].copy_from_slice(&pack_high_bits(&q));
        pack_nibbles(&q, &mut out[6..]);
    }
}

pub(crate) fn decode_q5_0(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for (blk, y) in src.chunks_exact(Q5_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(blk);
        unpack_five_bits(&blk[2..6], &blk[6..], &mut q);
        for (o, &c) in y.iter_mut().zip(&q) {
            *o = d * (c as i32 - 16) as f32;
        }
    }
}

// ---------------------------------------------------------------- Q4_1 / Q5_1

/// Shared encoder of Q4_1 (`nmax` 15) and Q5_1 (`nmax` 31); returns (d, m) bits.
fn encode_affine_block(x: &[f32], w: Option<[f32; QK]>, nmax: i32, q: &mut [u8; QK]) -> (u16, u16) {
    match w {
        None => {
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let d = (hi - lo) / nmax as f32;
            let id = inverse(d);
            for (c, &v) in q.iter_mut().zip(x) {
                *c = (((v - lo) * id + 0.5).trunc() as u8).min(nmax as u8);
            }
            (f16_sat(d), f16_sat(lo))
        }
        Some(w) => {
            let (scale, offset) = affine_scale(x, &w, nmax, 10, 0.1, false);
            let (dbits, mbits) = (f16_sat(scale), f16_sat(offset));
            let (d, m) = (f16_to_f32(dbits), f16_to_f32(mbits));
            let id = inverse(d);
            for (c, &v) in q.iter_mut().zip(x) {
                *c = round_clamp((v - m) * id, 0, nmax) as u8;
            }
            (dbits, mbits)
        }
    }
}

pub(crate) fn encode_q4_1(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    let mut q = [0u8; QK];
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(Q4_1_BYTES))
        .enumerate()
    {
        let (d, m) = encode_affine_block(x, block_weights(x, importance, b), 15, &mut q);
        write_f16(out, d);
        write_f16(&mut out[2..], m);
        pack_nibbles(&q, &mut out[4..]);
    }
}

pub(crate) fn decode_q4_1(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for (blk, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (read_f16(blk), read_f16(&blk[2..]));
        unpack_nibbles(&blk[4..], &mut q);
        for (o, &c) in y.iter_mut().zip(&q) {
            *o = d * c as f32 + m;
        }
    }
}

pub(crate) fn encode_q5_1(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    let mut q = [0u8; QK];
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(Q5_1_BYTES))
        .enumerate()
    {
        let (d, m) = encode_affine_block(x, block_weights(x, importance, b), 31, &mut q);
        write_f16(out, d);
        write_f16(&mut out[2..], m);
        out[4..8].copy_from_slice(&pack_high_bits(&q));
        pack_nibbles(&q, &mut out[8..]);
    }
}

pub(crate) fn decode_q5_1(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK];
    for (blk, y) in src.chunks_exact(Q5_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (read_f16(blk), read_f16(&blk[2..]));
        unpack_five_bits(&blk[4..8], &blk[8..], &mut q);
        for (o, &c) in y.iter_mut().zip(&q) {
            *o = d * c as f32 + m;
        }
    }
}
