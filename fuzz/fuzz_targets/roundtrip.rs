//! Fuzz the quality of encode -> decode on well-scaled blocks: every decoded
//! weight lies within a per-type fraction of its block's max |x|. Catches
//! garbage (wrong codes, overflowed scales, mis-packed bits) that a finite-only
//! check would miss (for the 1-2 bit types the bound only catches garbage).
//! Inputs are small integers times 2^-12..2^0 so no scale
//! saturates the f16 range; importance, when present, is in [1, 2].
#![no_main]

#[path = "common.rs"]
mod common;

use aqrecipe_codecs::{dequantize_rows, quantize_rows, row_bytes, BlockType, EncodeOptions};
use common::{pick_type, Cursor};
use libfuzzer_sys::fuzz_target;

/// Largest allowed |decoded - x| as a fraction of the block's max |x|.
/// Generous bounds: about twice the worst case of each format's grid.
fn tolerance(t: BlockType) -> f32 {
    use BlockType::*;
    match t {
        F32 => 0.0,
        F16 => 1e-3,
        BF16 => 8e-3,
        Q8_0 => 0.03,
        Q5_0 | Q5_1 | Q6_K => 0.1,
        Q4_0 | Q4_1 | Q5_K | IQ4_NL => 0.2,
        Q4_K => 0.25,
        Q3_K => 0.4,
        Q2_K => 0.6,
        TQ2_0 | TQ1_0 => 1.0,
        // IQ2_XXS stores an even number of negative signs per 8 weights, so one
        // weight of a group may come back with the wrong sign; IQ1 has no signs.
        IQ2_XXS | IQ1_S | IQ1_M => 2.5,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let t = pick_type(c.u8());
    let flags = c.u8();
    let l = t.layout();
    let row_len = l.block_weights * (1 + c.u8() as usize % 2);
    let scale = 2f32.powi(-((c.u8() % 13) as i32));
    let x: Vec<f32> = (0..row_len).map(|_| c.u16() as i16 as f32 * scale).collect();
    let importance: Option<Vec<f32>> =
        (flags & 1 == 1).then(|| (0..row_len).map(|_| 1.0 + c.u8() as f32 / 255.0).collect());
    let opts = EncodeOptions { ternary_absmean: flags & 2 != 0 };

    let mut packed = vec![0u8; row_bytes(t, row_len).unwrap()];
    quantize_rows(t, &x, row_len, importance.as_deref(), &opts, &mut packed).expect("finite input encodes");
    let mut y = vec![0f32; row_len];
    dequantize_rows(t, &packed, row_len, &mut y).expect("own output decodes");
    for (b, (xb, yb)) in x.chunks(l.block_weights).zip(y.chunks(l.block_weights)).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let bound = tolerance(t) * amax + 1e-6;
        for (i, (a, b2)) in xb.iter().zip(yb).enumerate() {
            let bound = if l.block_weights == 1 { tolerance(t) * a.abs() } else { bound };
            assert!(
                (a - b2).abs() <= bound,
                "{} block {b} weight {i}: {a} decoded to {b2} (block max {amax}, bound {bound})",
                l.name
            );
        }
    }
});
