//! GGUF block codecs: encode (with optional per-column importance) and decode.
//!
//! This crate has no Python dependency; `cargo test` runs it alone. The PyO3
//! binding in `rust/binding` is a thin wrapper over [`quantize_rows`] and
//! [`dequantize_rows`].
//!
//! Every codec works on whole rows whose length is a multiple of the type's
//! block size. Rows are independent, so [`quantize_rows`] spreads them over
//! rayon threads and the output does not depend on the thread count.

pub mod error;
pub mod half;
pub mod layout;

mod float;
pub mod gptq;
mod iq1;
mod iq2xxs;
mod iq4nl;
mod iq_grids;
mod kquants;
mod kquants_low;
mod legacy;
mod lowbit_common;
#[cfg(test)]
mod lowbit_tests;
mod qsearch;
mod simd;
#[cfg(test)]
mod simd_tests;
#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod fuzz_regressions;
#[cfg(test)]
mod size_tests;
mod ternary;

pub use error::CodecError;
pub use gptq::{quantize_rows_gptq, GptqOptions};
pub use layout::{BlockLayout, BlockType, LAYOUTS};

use rayon::prelude::*;

/// Options that change how a row is encoded (never how it is decoded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Ternary types (TQ1_0, TQ2_0): scale each block by the mean of |x|
    /// (BitNet b1.58) instead of the format's default max |x|.
    pub ternary_absmean: bool,
}

/// Encode one row. `src.len()` is a multiple of the block size, `dst` has
/// exactly `row_bytes(src.len())` bytes, and `importance` (if any) has one
/// finite, non-negative weight per column.
type RowEncoder = fn(src: &[f32], importance: Option<&[f32]>, opts: &EncodeOptions, dst: &mut [u8]);
/// Decode one row of `dst.len()` weights from `src`.
type RowDecoder = fn(src: &[u8], dst: &mut [f32]);

fn codec(t: BlockType) -> (RowEncoder, RowDecoder) {
    use BlockType::*;
    match t {
        F32 => (float::encode_f32, float::decode_f32),
        F16 => (float::encode_f16, float::decode_f16),
        BF16 => (float::encode_bf16, float::decode_bf16),
        Q8_0 => (legacy::encode_q8_0, legacy::decode_q8_0),
        Q4_0 => (legacy::encode_q4_0, legacy::decode_q4_0),
        Q4_1 => (legacy::encode_q4_1, legacy::decode_q4_1),
        Q5_0 => (legacy::encode_q5_0, legacy::decode_q5_0),
        Q5_1 => (legacy::encode_q5_1, legacy::decode_q5_1),
        Q2_K => (kquants_low::encode_q2_k, kquants_low::decode_q2_k),
        Q3_K => (kquants_low::encode_q3_k, kquants_low::decode_q3_k),
        Q4_K => (kquants::encode_q4_k, kquants::decode_q4_k),
        Q5_K => (kquants::encode_q5_k, kquants::decode_q5_k),
        Q6_K => (kquants::encode_q6_k, kquants::decode_q6_k),
        IQ4_NL => (iq4nl::encode_iq4_nl, iq4nl::decode_iq4_nl),
        IQ2_XXS => (iq2xxs::encode_iq2_xxs, iq2xxs::decode_iq2_xxs),
        IQ1_S => (iq1::encode_iq1_s, iq1::decode_iq1_s),
        IQ1_M => (iq1::encode_iq1_m, iq1::decode_iq1_m),
        TQ1_0 => (ternary::encode_tq1_0, ternary::decode_tq1_0),
        TQ2_0 => (ternary::encode_tq2_0, ternary::decode_tq2_0),
    }
}

fn check_row_len(t: BlockType, row_len: usize) -> Result<(), CodecError> {
    let bs = t.layout().block_weights;
    if row_len == 0 || row_len % bs != 0 {
        return Err(CodecError::RowLength { type_name: t.name(), row_len, block_weights: bs });
    }
    Ok(())
}

fn check_importance(importance: Option<&[f32]>, row_len: usize) -> Result<(), CodecError> {
    if let Some(w) = importance {
        if w.len() != row_len {
            return Err(CodecError::ImportanceLength { expected: row_len, got: w.len() });
        }
        if let Some((col, &value)) = w.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(CodecError::BadImportance { col, value });
        }
    }
    Ok(())
}

/// First non-finite value in row-major order, so the error is deterministic.
fn find_non_finite(data: &[f32], row_len: usize) -> Option<(usize, usize, f32)> {
    data.iter()
        .position(|v| !v.is_finite())
        .map(|i| (i / row_len, i % row_len, data[i]))
}

/// Smallest |x| that a float storage type rounds to infinity (round to nearest
/// even: the halfway point to the next power of two past its largest finite value).
fn overflow_threshold(t: BlockType) -> Option<f32> {
    match t {
        BlockType::F16 => Some(65520.0),
        BlockType::BF16 => Some(f32::from_bits(0x7f7f_8000)),
        _ => None,
    }
}

/// Refuse the first finite weight (row-major) that `t` would store as ±inf (F16 / BF16 only).
fn check_range(t: BlockType, data: &[f32], row_len: usize) -> Result<(), CodecError> {
    let Some(limit) = overflow_threshold(t) else { return Ok(()) };
    match data.iter().position(|v| v.abs() >= limit) {
        None => Ok(()),
        Some(i) => Err(CodecError::OutOfRange {
            type_name: t.name(),
            row: i / row_len,
            col: i % row_len,
            value: data[i],
            max: if t == BlockType::F16 { 65504.0 } else { f32::from_bits(0x7f7f_0000) },
        }),
    }
}

/// `a * b`, refused as [`CodecError::SizeOverflow`] past `isize::MAX`: no slice,
/// `Vec` or numpy array can be larger, so such a size comes from a shape that is not real.
fn size_mul(a: usize, b: usize, what: impl FnOnce() -> String) -> Result<usize, CodecError> {
    match a.checked_mul(b) {
        Some(n) if n <= isize::MAX as usize => Ok(n),
        _ => Err(CodecError::SizeOverflow { what: what() }),
    }
}

/// Elements of an array of `shape` (1 for `[]`) whose items are `item_bytes` wide.
/// Refused when the product of its non-zero dims times `item_bytes` exceeds
/// `isize::MAX`: numpy refuses such a shape even when a zero dim makes it empty,
/// and a wrapped product would pass for a small one.
pub fn element_count(shape: &[usize], item_bytes: usize) -> Result<usize, CodecError> {
    let item = item_bytes.max(1);
    let nonzero_bytes = shape.iter().try_fold(item, |n, &d| {
        size_mul(n, d.max(1), || format!("the byte size of an array of shape {shape:?} ({item}-byte items)"))
    })?;
    Ok(if shape.contains(&0) { 0 } else { nonzero_bytes / item })
}

/// Bytes needed for one row of `row_len` weights of type `t`.
pub fn row_bytes(t: BlockType, row_len: usize) -> Result<usize, CodecError> {
    check_row_len(t, row_len)?;
    if row_len > isize::MAX as usize {
        return Err(CodecError::SizeOverflow { what: format!("a row of {row_len} weights") });
    }
    let l = t.layout();
    size_mul(row_len / l.block_weights, l.block_bytes, || {
        format!("the byte size of a row of {row_len} {} weights", t.name())
    })
}

/// Bytes of `n_rows` rows of `row_len` weights of type `t`.
pub fn tensor_bytes(t: BlockType, n_rows: usize, row_len: usize) -> Result<usize, CodecError> {
    let rb = row_bytes(t, row_len)?;
    size_mul(n_rows, rb, || format!("the byte size of {n_rows} rows of {rb} bytes ({} x {row_len})", t.name()))
}

/// Floats that `n_bytes` of type `t` decode to as a tensor of `shape` (its last
/// dim is the row length), checked before anything is allocated: the row fits
/// `t`'s blocks, every size fits in memory and the byte count matches. A shape
/// whose product wraps (`[2^62, 4, 32]` is 0 mod 2^64) is refused, not decoded as empty.
pub fn decoded_len(t: BlockType, n_bytes: usize, shape: &[usize]) -> Result<usize, CodecError> {
    let row_len = shape.last().copied().unwrap_or(0);
    row_bytes(t, row_len)?;
    let n = element_count(shape, std::mem::size_of::<f32>())?;
    let expected = tensor_bytes(t, n / row_len, row_len)?;
    if n_bytes != expected {
        return Err(CodecError::ByteLength { expected, got: n_bytes });
    }
    Ok(n)
}

/// Encode `data` (`n_rows * row_len` floats, row-major) into `out`
/// (`n_rows * row_bytes` bytes). Rows run in parallel on the current rayon pool.
///
/// Errors: a bad shape or importance, a NaN/Inf weight, or (F16, BF16) a finite
/// weight the type would store as infinity. Finite input never decodes to a
/// non-finite value: block scales beyond the f16 range are saturated.
pub fn quantize_rows(
    t: BlockType,
    data: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    opts: &EncodeOptions,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let rb = row_bytes(t, row_len)?;
    if data.len() % row_len != 0 {
        return Err(CodecError::ShapeMismatch { len: data.len(), row_len });
    }
    let n_rows = data.len() / row_len;
    let expected = tensor_bytes(t, n_rows, row_len)?;
    if out.len() != expected {
        return Err(CodecError::ByteLength { expected, got: out.len() });
    }
    check_importance(importance, row_len)?;
    if let Some((row, col, value)) = find_non_finite(data, row_len) {
        return Err(CodecError::NonFinite { row, col, value });
    }
    check_range(t, data, row_len)?;
    let (encode, _) = codec(t);
    out.par_chunks_mut(rb)
        .zip(data.par_chunks(row_len))
        .for_each(|(dst, src)| encode(src, importance, opts, dst));
    Ok(())
}

/// Decode `bytes` (whole rows of type `t`) into `out` (`n_rows * row_len` floats).
///
/// Any bytes decode without panicking. A block decodes to finite values whenever
/// the scales it stores (`d`, `dmin`, `m`, IQ1_M's split f16 scale; for F32/F16/BF16
/// the value itself) are finite; a stored inf/NaN scale decodes to inf/NaN, as in
/// llama.cpp. `fuzz/` checks both claims (`cargo fuzz run decode`).
pub fn dequantize_rows(t: BlockType, bytes: &[u8], row_len: usize, out: &mut [f32]) -> Result<(), CodecError> {
    let rb = row_bytes(t, row_len)?;
    if out.len() % row_len != 0 {
        return Err(CodecError::ShapeMismatch { len: out.len(), row_len });
    }
    let n_rows = out.len() / row_len;
    let expected = tensor_bytes(t, n_rows, row_len)?;
    if bytes.len() != expected {
        return Err(CodecError::ByteLength { expected, got: bytes.len() });
    }
    let (_, decode) = codec(t);
    out.par_chunks_mut(row_len)
        .zip(bytes.par_chunks(rb))
        .for_each(|(dst, src)| decode(src, dst));
    Ok(())
}
