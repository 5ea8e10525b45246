//! K-quants with 256-weight super-blocks: Q4_K, Q5_K, Q6_K.
//!
//! Q4_K / Q5_K: eight sub-blocks of 32, each `x ~ d*sc*q - dmin*m` with 6-bit
//! `sc`, `m` and 4/5-bit `q`. Q6_K: sixteen sub-blocks of 16, `x ~ d*sc*(q-32)`
//! with int8 `sc` and 6-bit `q`.
//!
//! Encoding is a two-level search: each sub-block first gets its own best
//! (scale, min) from the weighted searches in [`crate::qsearch`]; the
//! super-block scale `d` (and `dmin`) then quantize those to integers, and
//! each sub-block's integer scale (and min) is polished over its neighbours
//! against the stored f16 `d` with the codes re-rounded, keeping the lowest
//! weighted error. Decoders follow the `gguf` package's formulas operation
//! for operation.

use std::ops::Range;

use crate::half::f16_to_f32;
use crate::legacy::f16_sat;
use crate::qsearch::{
    affine_scale, element_weights, for_lanes, lane_sum, round_clamp, round_fast, signed_absmax,
    symmetric_scale, LANES,
};
use crate::layout::{shared_block_weights, BlockType};
use crate::EncodeOptions;

/// Weights per super-block of every type here (from the layout table).
const QK_K: usize = shared_block_weights(&[BlockType::Q4_K, BlockType::Q5_K, BlockType::Q6_K]);
const Q4K_BYTES: usize = BlockType::Q4_K.block_bytes();
const Q5K_BYTES: usize = BlockType::Q5_K.block_bytes();
const Q6K_BYTES: usize = BlockType::Q6_K.block_bytes();
const Q4K_QS: Range<usize> = BlockType::Q4_K.field("qs");
const Q5K_QS: Range<usize> = BlockType::Q5_K.field("qs");
const Q6K_QL: Range<usize> = BlockType::Q6_K.field("ql");
const Q6K_QH: Range<usize> = BlockType::Q6_K.field("qh");
const Q6K_SCALES: Range<usize> = BlockType::Q6_K.field("scales");
const Q6K_D: Range<usize> = BlockType::Q6_K.field("d");
// pack_q6 splits the block into ql and qh: they lead it, in that order.
const _: () = assert!(Q6K_QL.start == 0 && Q6K_QH.start == Q6K_QL.end);

#[inline]
fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

fn super_block_weights(x: &[f32], importance: Option<&[f32]>, b: usize) -> [f32; QK_K] {
    let mut w = [0.0f32; QK_K];
    element_weights(
        x,
        importance.map(|imp| &imp[b * QK_K..(b + 1) * QK_K]),
        &mut w,
    );
    w
}

// ------------------------------------------------------------ Q4_K / Q5_K

/// Result of the affine super-block search: f16 bits of d and dmin, the
/// 6-bit scales and mins of the 8 sub-blocks, and the codes.
struct AffineSuperBlock {
    d: u16,
    dmin: u16,
    sc: [u8; 8],
    mn: [u8; 8],
    q: [u8; QK_K],
}

/// Codes of one sub-block for a decoded (scale, min) pair and their weighted error.
fn affine_codes(x: &[f32], w: &[f32], scale: f32, min: f32, nmax: i32, q: &mut [u8]) -> f64 {
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    let top = nmax as f32;
    let mut err = [0.0f32; LANES];
    let mut i = 0;
    for_lanes(x, w, |k, v, wi| {
        let l = round_fast((v + min) * inv, 0.0, top);
        q[i] = l as u8;
        i += 1;
        let e = scale * l - min - v;
        err[k] += wi * e * e;
    });
    lane_sum(err)
}

fn search_affine_super_block(x: &[f32], w: &[f32], nmax: i32) -> AffineSuperBlock {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for j in 0..8 {
        let r = j * 32..(j + 1) * 32;
        let (s, off) = affine_scale(&x[r.clone()], &w[r], nmax, 10, 0.1, true);
        scales[j] = s;
        mins[j] = -off;
    }
    let max_s = scales.iter().fold(0.0f32, |a, &b| a.max(b));
    let max_m = mins.iter().fold(0.0f32, |a, &b| a.max(b));
    let dbits = f16_sat(max_s / 63.0);
    let mbits = f16_sat(max_m / 63.0);
    let (d, dmin) = (f16_to_f32(dbits), f16_to_f32(mbits));
    let (id, imin) = (
        if d > 0.0 { 1.0 / d } else { 0.0 },
        if dmin > 0.0 { 1.0 / dmin } else { 0.0 },
    );

    let mut out = AffineSuperBlock {
        d: dbits,
        dmin: mbits,
        sc: [0; 8],
        mn: [0; 8],
        q: [0; QK_K],
    };
    let mut trial = [0u8; 32];
    for j in 0..8 {
        let r = j * 32..(j + 1) * 32;
        let sc0 = round_clamp(scales[j] * id, 0, 63);
        let mn0 = round_clamp(mins[j] * imin, 0, 63);
        let mut best = f64::INFINITY;
        for sc in (sc0 - 1).max(0)..=(sc0 + 1).min(63) {
            for mn in (mn0 - 1).max(0)..=(mn0 + 1).min(63) {
                let err = affine_codes(
                    &x[r.clone()],
                    &w[r.clone()],
                    d * sc as f32,
                    dmin * mn as f32,
                    nmax,
                    &mut trial,
                );
                if err < best {
                    best = err;
                    out.sc[j] = sc as u8;
                    out.mn[j] = mn as u8;
                    out.q[r.clone()].copy_from_slice(&trial);
                }
            }
        }
    }
    out
}

/// The 12-byte 6-bit packing of 8 scales and 8 mins shared by Q4_K and Q5_K.
fn pack_scales(sc: &[u8; 8], mn: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
}

fn unpack_scales(b: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = b[j] & 0x3f;
        mn[j] = b[j + 4] & 0x3f;
        sc[j + 4] = (b[j + 8] & 0x0f) | ((b[j] >> 2) & 0x30);
        mn[j + 4] = (b[j + 8] >> 4) | ((b[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Sub-block pairs (2c, 2c+1) share 32 bytes: low nibbles, then high nibbles.
fn pack_q4(q: &[u8; QK_K], qs: &mut [u8]) {
    for c in 0..4 {
        for b in 0..32 {
            qs[c * 32 + b] = (q[64 * c + b] & 0x0f) | ((q[64 * c + 32 + b] & 0x0f) << 4);
        }
    }
}

fn unpack_q4(qs: &[u8], q: &mut [u8; QK_K]) {
    for c in 0..4 {
        for b in 0..32 {
            q[64 * c + b] = qs[c * 32 + b] & 0x0f;
            q[64 * c + 32 + b] = qs[c * 32 + b] >> 4;
        }
    }
}

fn decode_affine(d: f32, dmin: f32, sc: &[u8; 8], mn: &[u8; 8], q: &[u8; QK_K], y: &mut [f32]) {
    for j in 0..8 {
        let dl = d * sc[j] as f32;
        let ml = dmin * mn[j] as f32;
        for i in j * 32..(j + 1) * 32 {
            y[i] = dl * q[i] as f32 - ml;
        }
    }
}

pub(crate) fn encode_q4_k(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (b, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(Q4K_BYTES))
        .enumerate()
    {
        let w = super_block_weights(x, importance, b);
        let s = search_affine_super_block(x, &w, 15);
        out[0..2].copy_from_slice(&s.d.to_le_bytes());
        out[2..4].copy_from_slice(&s.dmin.to_le_bytes());
        pack_scales(&s.sc, &s.mn, &mut out[4..16]);
        pack_q4(&s.q, &mut out[Q4K_QS]);
    }
}

pub(crate) fn decode_q4_k(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK_K];
    for (blk, y) in src.chunks_exact(Q4K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (sc, mn) = unpack_scales(&blk[4..16]);
        unpack_q4(&blk[Q4K_QS], &mut q);
        decode_affine(read_f16(blk), read_f16(&blk[2..]), &sc, &mn, &q, y);
    }
}

pub(crate) fn encode_q5_k(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (b, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(Q5K_BYTES))
        .enumerate()
    {
        let w = super_block_weights(x, importance, b);
        let s = search_affine_super_block(x, &w, 31);
        out[0..2].copy_from_slice(&s.d.to_le_bytes());
        out[2..4].copy_from_slice(&s.dmin.to_le_bytes());
        pack_scales(&s.sc, &s.mn, &mut out[4..16]);
        // qh byte b holds bit 4 of weight b of every sub-block (bit j = sub-block j).
        for b in 0..32 {
            out[16 + b] = (0..8).fold(0u8, |h, j| h | (((s.q[32 * j + b] >> 4) & 1) << j));
        }
        pack_q4(&s.q, &mut out[Q5K_QS]);
    }
}

pub(crate) fn decode_q5_k(src: &[u8], dst: &mut [f32]) {
    let mut q = [0u8; QK_K];
    for (blk, y) in src.chunks_exact(Q5K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (sc, mn) = unpack_scales(&blk[4..16]);
        unpack_q4(&blk[Q5K_QS], &mut q);
        for j in 0..8 {
            for b in 0..32 {
                q[32 * j + b] |= ((blk[16 + b] >> j) & 1) << 4;
            }
        }
        decode_affine(read_f16(blk), read_f16(&blk[2..]), &sc, &mn, &q, y);
    }
}

// ------------------------------------------------------------ Q6_K

/// Codes (offset by 32) of one 16-weight sub-block for a decoded scale and their weighted error.
fn symmetric_codes(x: &[f32], w: &[f32], scale: f32, q: &mut [u8]) -> f64 {
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    let mut err = [0.0f32; LANES];
    let mut i = 0;
    for_lanes(x, w, |k, v, wi| {
        let l = round_fast(v * inv, -32.0, 31.0);
        q[i] = (l as i32 + 32) as u8;
        i += 1;
        let e = scale * l - v;
        err[k] += wi * e * e;
    });
    lane_sum(err)
}

pub(crate) fn encode_q6_k(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (b, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(Q6K_BYTES))
        .enumerate()
    {
        let w = super_block_weights(x, importance, b);
        let mut scales = [0.0f32; 16];
        for (j, s) in scales.iter_mut().enumerate() {
            let r = j * 16..(j + 1) * 16;
            *s = symmetric_scale(&x[r.clone()], &w[r], -32, 31, 9, 0.1);
        }
        // The largest sub-block scale maps to -128, the long end of int8.
        let dbits = f16_sat(signed_absmax(&scales) / -128.0);
        let d = f16_to_f32(dbits);
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut sc = [0i8; 16];
        let mut q = [32u8; QK_K];
        let mut trial = [0u8; 16];
        for j in 0..16 {
            let r = j * 16..(j + 1) * 16;
            let s0 = round_clamp(scales[j] * id, -128, 127);
            let mut best = f64::INFINITY;
            for s in (s0 - 1).max(-128)..=(s0 + 1).min(127) {
                let err = symmetric_codes(&x[r.clone()], &w[r.clone()], d * s as f32, &mut trial);
                if err < best {
                    best = err;
                    sc[j] = s as i8;
                    q[r.clone()].copy_from_slice(&trial);
                }
            }
        }
        pack_q6(&q, &sc, dbits, out);
    }
}

/// Layout per 128-weight half h: ql[64h + i] low nibble = weight i, high nibble
/// = weight i + 64; qh[32h + i] bits 2s..2s+2 = top bits of weight 32s + i.
fn pack_q6(q: &[u8; QK_K], sc: &[i8; 16], dbits: u16, out: &mut [u8]) {
    let (ql, qh) = out[..Q6K_QH.end].split_at_mut(Q6K_QH.start);
    for h in 0..2 {
        let q = &q[128 * h..128 * (h + 1)];
        for i in 0..64 {
            ql[64 * h + i] = (q[i] & 0x0f) | ((q[i + 64] & 0x0f) << 4);
        }
        for i in 0..32 {
            qh[32 * h + i] = (0..4).fold(0u8, |acc, s| acc | ((q[32 * s + i] >> 4) << (2 * s)));
        }
    }
    for (o, &s) in out[Q6K_SCALES].iter_mut().zip(sc) {
        *o = s as u8;
    }
    out[Q6K_D].copy_from_slice(&dbits.to_le_bytes());
}

pub(crate) fn decode_q6_k(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(Q6K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (ql, qh, scales) = (&blk[Q6K_QL], &blk[Q6K_QH], &blk[Q6K_SCALES]);
        let d = read_f16(&blk[Q6K_D]);
        for h in 0..2 {
            for i in 0..128 {
                let low = (ql[64 * h + i % 64] >> (4 * (i / 64))) & 0x0f;
                let high = (qh[32 * h + i % 32] >> (2 * (i / 32))) & 0x03;
                let k = 128 * h + i;
                let dl = d * scales[k / 16] as i8 as f32;
                y[k] = dl * ((low | (high << 4)) as i32 - 32) as f32;
            }
        }
    }
}
