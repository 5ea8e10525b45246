//! The AVX2 build of the row encoders writes the same bytes as the baseline
//! build (see `simd`). On a CPU without AVX2 both runs take the baseline
//! path and the test checks nothing more than determinism.

use crate::simd::FORCE_BASELINE;
use crate::{quantize_rows, BlockType, EncodeOptions};
use std::sync::atomic::Ordering;

/// Deterministic heavy-tailed data: a mix of small values and rare outliers.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(|_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let u = ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5;
        if s % 97 == 0 { u * 40.0 } else { u }
    }).collect()
}

#[test]
fn avx2_and_baseline_builds_write_the_same_bytes() {
    let row = 512;
    let x = data(24 * row, 7);
    let imp: Vec<f32> = data(row, 8).iter().map(|v| (3.0 * v).exp()).collect();
    for t in [
        BlockType::Q2_K, BlockType::Q3_K, BlockType::Q4_K, BlockType::Q5_K, BlockType::Q6_K,
        BlockType::IQ4_NL, BlockType::IQ2_XXS, BlockType::IQ1_S, BlockType::IQ1_M,
    ] {
        let rb = crate::row_bytes(t, row).unwrap();
        for importance in [None, Some(&imp[..])] {
            let mut out = [vec![0u8; 24 * rb], vec![0u8; 24 * rb]];
            for (k, o) in out.iter_mut().enumerate() {
                FORCE_BASELINE.store(k == 1, Ordering::Relaxed);
                quantize_rows(t, &x, row, importance, &EncodeOptions::default(), o).unwrap();
            }
            FORCE_BASELINE.store(false, Ordering::Relaxed);
            assert!(out[0] == out[1], "{} (importance: {})", t.name(), importance.is_some());
        }
    }
}
