//! Fuzz `quantize_rows` with arbitrary f32 bit patterns (NaN, Inf, denormals,
//! values near f32::MAX) and arbitrary importance vectors, over every block type.
//!
//! Contract checked: non-finite weights or importance (or negative importance),
//! and F16/BF16 weights beyond their range, give a `CodecError`; other input gives Ok, the encoder never panics, the
//! same input encodes to the same bytes, and decoding the result gives finite
//! weights (F32 bit for bit).
#![no_main]

#[path = "common.rs"]
mod common;

use aqrecipe_codecs::{dequantize_rows, quantize_rows, row_bytes, BlockType, CodecError, EncodeOptions};
use common::{pick_type, Cursor};
use libfuzzer_sys::fuzz_target;

/// One value from the input: raw bits, raw bits with non-finite values zeroed,
/// or a small integer times a power of two (denormal to huge).
fn value(c: &mut Cursor, mode: u8) -> f32 {
    match mode % 3 {
        0 => f32::from_bits(c.u32()),
        1 => {
            let v = f32::from_bits(c.u32());
            if v.is_finite() { v } else { 0.0 }
        }
        _ => {
            let [m, e] = c.bytes::<2>();
            (m as i8 as f32) * 2f32.powi(e as i32 - 150)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let t = pick_type(c.u8());
    let flags = c.u8();
    let l = t.layout();
    let row_len = l.block_weights * (1 + c.u8() as usize % 4);
    let n_rows = 1 + c.u8() as usize % 3;
    let opts = EncodeOptions { ternary_absmean: flags & 0x40 != 0 };

    let x: Vec<f32> = (0..row_len * n_rows).map(|_| value(&mut c, flags)).collect();
    let importance: Option<Vec<f32>> = match (flags >> 2) % 3 {
        0 => None,
        1 => Some((0..row_len).map(|_| value(&mut c, flags >> 4)).collect()),
        _ => Some((0..row_len).map(|_| value(&mut c, flags >> 4).abs()).collect()),
    };
    let bad_importance = importance
        .as_ref()
        .is_some_and(|w| w.iter().any(|v| !v.is_finite() || *v < 0.0));
    let bad_data = x.iter().any(|v| !v.is_finite());
    // F16 / BF16 refuse finite weights they would round to infinity.
    let limit = match t {
        BlockType::F16 => 65520.0,
        BlockType::BF16 => f32::from_bits(0x7f7f_8000),
        _ => f32::INFINITY,
    };
    let out_of_range = x.iter().any(|v| v.is_finite() && v.abs() >= limit);

    let rb = row_bytes(t, row_len).expect("valid row length");
    let mut packed = vec![0u8; rb * n_rows];
    let result = quantize_rows(t, &x, row_len, importance.as_deref(), &opts, &mut packed);
    match result {
        Err(CodecError::BadImportance { .. }) => assert!(bad_importance),
        Err(CodecError::NonFinite { .. }) => assert!(bad_data && !bad_importance),
        Err(CodecError::OutOfRange { .. }) => assert!(out_of_range && !bad_data && !bad_importance),
        Err(e) => panic!("{}: unexpected error {e}", l.name),
        Ok(()) => {
            assert!(!bad_importance && !bad_data && !out_of_range, "{}: bad input accepted", l.name);
            let mut again = vec![0u8; packed.len()];
            quantize_rows(t, &x, row_len, importance.as_deref(), &opts, &mut again).unwrap();
            assert!(packed == again, "{}: encoding is not deterministic", l.name);
            let mut y = vec![0f32; x.len()];
            dequantize_rows(t, &packed, row_len, &mut y).expect("own output decodes");
            if let Some(i) = y.iter().position(|v| !v.is_finite()) {
                panic!("{}: finite input {} decoded to {} at {i}", l.name, x[i], y[i]);
            }
            if t == BlockType::F32 {
                assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
});
