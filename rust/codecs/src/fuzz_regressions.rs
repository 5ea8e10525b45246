//! Regression tests for what the cargo-fuzz targets in `fuzz/` found (issue #8).

use crate::half::{f32_to_bf16, f32_to_f16};
use crate::{dequantize_rows, quantize_rows, BlockType, CodecError, EncodeOptions};

fn encode(t: BlockType, x: &[f32]) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; crate::row_bytes(t, x.len())?];
    quantize_rows(t, x, x.len(), None, &EncodeOptions::default(), &mut out).map(|_| out)
}

/// fuzz/encode: a finite 9.9e31 stored as F16 decoded to +inf. Such weights are
/// now refused with `OutOfRange` instead of being written as infinity.
#[test]
fn f16_and_bf16_refuse_finite_weights_they_would_store_as_infinity() {
    for (t, big) in [(BlockType::F16, 9.887675e31f32), (BlockType::F16, -65520.0), (BlockType::BF16, f32::MAX)] {
        match encode(t, &[1.0, big]) {
            Err(CodecError::OutOfRange { row: 0, col: 1, value, .. }) => assert_eq!(value, big),
            other => panic!("{t:?} {big}: {other:?}"),
        }
    }
}

#[test]
fn the_range_limits_match_the_rounding_of_the_half_conversions() {
    // Just below the threshold rounds to the largest finite value and is accepted.
    let below_f16 = f32::from_bits(65520f32.to_bits() - 1);
    assert_eq!(f32_to_f16(below_f16), 0x7bff);
    assert_eq!(f32_to_f16(65520.0), 0x7c00);
    let below_bf16 = f32::from_bits(0x7f7f_7fff);
    assert_eq!(f32_to_bf16(below_bf16), 0x7f7f);
    assert_eq!(f32_to_bf16(f32::from_bits(0x7f7f_8000)), 0x7f80);
    for (t, v) in [(BlockType::F16, below_f16), (BlockType::F16, -65504.0), (BlockType::BF16, below_bf16)] {
        let bytes = encode(t, &[v]).unwrap();
        let mut y = [0f32];
        dequantize_rows(t, &bytes, 1, &mut y).unwrap();
        assert!(y[0].is_finite() && (y[0] - v).abs() <= v.abs() * 1e-2, "{t:?}: {v} -> {}", y[0]);
    }
}
