//! IQ4_NL: 32-weight blocks, one f16 scale and 4-bit indices into a fixed
//! non-linear table (denser near zero, where most weights are).
//!
//! The encoder searches the scale that minimises the weighted error over
//! table-rounded codes ([`crate::qsearch::table_scale`]), stores it as f16 and
//! re-rounds every weight against the stored scale.

use crate::half::f16_to_f32;
use crate::legacy::f16_sat;
use crate::qsearch::{element_weights, nearest_in_table, table_scale};
use crate::layout::BlockType;
use crate::EncodeOptions;

const QK: usize = BlockType::IQ4_NL.block_weights();
const BYTES: usize = BlockType::IQ4_NL.block_bytes();

/// The format's code book (llama.cpp's `kvalues_iq4nl`), ascending.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn table() -> [f32; 16] {
    KVALUES.map(|v| v as f32)
}

pub(crate) fn encode_iq4_nl(
    src: &[f32],
    importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    let t = table();
    let mut w = [0.0f32; QK];
    for (b, (x, out)) in src
        .chunks_exact(QK)
        .zip(dst.chunks_exact_mut(BYTES))
        .enumerate()
    {
        element_weights(x, importance.map(|imp| &imp[b * QK..(b + 1) * QK]), &mut w);
        let dbits = f16_sat(table_scale(x, &w, &t, 7, 1.0));
        let d = f16_to_f32(dbits);
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out[..2].copy_from_slice(&dbits.to_le_bytes());
        let code = |v: f32| nearest_in_table(&t, v * id) as u8;
        for j in 0..QK / 2 {
            out[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
        }
    }
}

pub(crate) fn decode_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (blk, y) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        for j in 0..QK / 2 {
            y[j] = d * KVALUES[(blk[2 + j] & 0x0f) as usize] as f32;
            y[j + QK / 2] = d * KVALUES[(blk[2 + j] >> 4) as usize] as f32;
        }
    }
}
