//! Fuzz `dequantize_rows` over every block type with arbitrary bytes and shapes.
//!
//! Contract checked: it returns Ok exactly when the shape is valid (row length a
//! positive multiple of the block size, whole rows, matching byte count) and a
//! `CodecError` otherwise, never panics, and an Ok block is finite whenever its
//! stored scales are finite.
#![no_main]

#[path = "common.rs"]
mod common;

use aqrecipe_codecs::{dequantize_rows, row_bytes};
use common::{pick_type, stored_scales_finite, Cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let t = pick_type(c.u8());
    let l = t.layout();
    let well_formed = c.u8() & 1 == 0;
    let (row_len, out_len, bytes) = if well_formed {
        let row_len = l.block_weights * (1 + c.u8() as usize % 8);
        let rb = row_bytes(t, row_len).expect("a multiple of the block size is valid");
        let rest = c.rest();
        let n_rows = rest.len() / rb;
        (row_len, n_rows * row_len, &rest[..n_rows * rb])
    } else {
        // Any shape at all: bounded by u16 so the output buffer stays small.
        let row_len = c.u16() as usize;
        let out_len = c.u16() as usize;
        (row_len, out_len, c.rest())
    };
    let mut out = vec![0f32; out_len];
    let valid = row_len > 0
        && row_len % l.block_weights == 0
        && out_len % row_len == 0
        && bytes.len() == out_len / row_len * (row_len / l.block_weights * l.block_bytes);
    match dequantize_rows(t, bytes, row_len, &mut out) {
        Ok(()) => {
            assert!(valid, "{} accepted row_len {row_len}, {out_len} values, {} bytes", l.name, bytes.len());
            for (blk, y) in bytes.chunks_exact(l.block_bytes).zip(out.chunks_exact(l.block_weights)) {
                if stored_scales_finite(t, blk) {
                    assert!(y.iter().all(|v| v.is_finite()), "{}: finite scales decoded to {y:?}", l.name);
                } else if l.block_weights == 1 {
                    assert!(!y[0].is_finite(), "{}: non-finite value decoded to {}", l.name, y[0]);
                }
            }
        }
        Err(e) => {
            assert!(!valid, "{}: valid shape refused: {e}", l.name);
            assert!(!e.to_string().is_empty());
        }
    }
});
