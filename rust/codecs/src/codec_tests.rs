//! Tests of the foundation codecs through the public row API: hand-computed
//! vectors, round-trip error bounds, awkward inputs and properties.

use crate::{dequantize_rows, quantize_rows, row_bytes, BlockType, EncodeOptions};
use proptest::prelude::*;

const FOUNDATION: [BlockType; 12] = [
    BlockType::F32,
    BlockType::F16,
    BlockType::BF16,
    BlockType::Q8_0,
    BlockType::Q4_0,
    BlockType::Q4_1,
    BlockType::Q5_0,
    BlockType::Q5_1,
    BlockType::Q4_K,
    BlockType::Q5_K,
    BlockType::Q6_K,
    BlockType::IQ4_NL,
];

fn encode(t: BlockType, x: &[f32], row_len: usize, imp: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / row_len * row_bytes(t, row_len).unwrap()];
    quantize_rows(t, x, row_len, imp, &EncodeOptions::default(), &mut out).unwrap();
    out
}

fn round_trip(t: BlockType, x: &[f32], row_len: usize, imp: Option<&[f32]>) -> Vec<f32> {
    let bytes = encode(t, x, row_len, imp);
    let mut y = vec![0f32; x.len()];
    dequantize_rows(t, &bytes, row_len, &mut y).unwrap();
    y
}

/// Deterministic standard normal samples (xorshift64* + Box-Muller).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32
        })
        .collect()
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn q8_0_hand_computed_block() {
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = -63.5; // ties round away from zero
    x[2] = 0.5;
    let b = encode(BlockType::Q8_0, &x, 32, None);
    let mut expect = vec![0x00, 0x3c, 127, (-64i8) as u8, 1];
    expect.resize(34, 0);
    assert_eq!(b, expect);
}

#[test]
fn q4_0_hand_computed_block() {
    let mut x = [0.0f32; 32];
    x[0] = -8.0; // signed absmax: d = -8 / -8 = 1
    x[1] = 4.0;
    x[2] = 7.0;
    x[3] = 2.5; // trunc(2.5 + 8.5) = 11
    let b = encode(BlockType::Q4_0, &x, 32, None);
    let mut expect = vec![0x00, 0x3c, 0x80, 0x8c, 0x8f, 0x8b];
    expect.resize(18, 0x88);
    assert_eq!(b, expect);
    let mut y = [0f32; 32];
    dequantize_rows(BlockType::Q4_0, &b, 32, &mut y).unwrap();
    assert_eq!(&y[..4], &[-8.0, 4.0, 7.0, 3.0]);
}

#[test]
fn q6_k_and_q4_k_are_exact_on_their_grids() {
    // Integers in a small range are representable exactly by both formats.
    let x: Vec<f32> = (0..256).map(|i| ((i * 7) % 16) as f32 - 8.0).collect();
    for t in [BlockType::Q6_K, BlockType::Q5_K, BlockType::Q4_K] {
        let y = round_trip(t, &x, 256, None);
        assert!(rel_rmse(&x, &y) < 1e-3, "{t:?}: {}", rel_rmse(&x, &y));
    }
}

#[test]
fn random_round_trip_error_bounds() {
    let bounds = [
        (BlockType::F32, 0.0),
        (BlockType::F16, 5e-4),
        (BlockType::BF16, 4e-3),
        (BlockType::Q8_0, 0.01),
        (BlockType::Q5_1, 0.05),
        (BlockType::Q5_0, 0.05),
        (BlockType::Q4_1, 0.11),
        (BlockType::Q4_0, 0.12),
        (BlockType::IQ4_NL, 0.10),
        (BlockType::Q6_K, 0.025),
        (BlockType::Q5_K, 0.05),
        (BlockType::Q4_K, 0.10),
    ];
    let x = normal(4 * 512, 7);
    for (t, bound) in bounds {
        let e = rel_rmse(&x, &round_trip(t, &x, 512, None));
        assert!(e <= bound, "{t:?}: relative rmse {e} > {bound}");
    }
}

#[test]
fn awkward_rows_stay_finite() {
    let n = 512;
    let mut cases: Vec<Vec<f32>> = vec![vec![0.0; n], vec![3.25; n], vec![-1e-3; n]];
    let mut outlier = normal(n, 3);
    outlier[100] = 500.0;
    cases.push(outlier);
    cases.push(
        (0..n)
            .map(|i| if i % 2 == 0 { 60000.0 } else { -60000.0 })
            .collect(),
    );
    cases.push(
        normal(n, 5)
            .iter()
            .map(|v| (v * 30000.0).clamp(-60000.0, 60000.0))
            .collect(),
    );
    cases.push(normal(n, 6).iter().map(|v| v * 1e-40).collect()); // denormals
    cases.push(
        (0..n)
            .map(|i| if i == 3 { f32::MIN_POSITIVE } else { 0.0 })
            .collect(),
    );
    for t in FOUNDATION {
        for x in &cases {
            let y = round_trip(t, x, n, None);
            assert!(
                y.iter().all(|v| v.is_finite()),
                "{t:?} produced non-finite output"
            );
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            // A least-squares scale may overshoot the extreme value a little, never much.
            let worst = y.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(
                worst <= 1.1 * amax + 1e-30,
                "{t:?} overshoots {amax}: {worst}"
            );
        }
    }
}

#[test]
fn constant_rows_are_reconstructed_closely() {
    let x = vec![0.7f32; 512];
    for t in FOUNDATION {
        let y = round_trip(t, &x, 512, None);
        assert!(rel_rmse(&x, &y) < 4e-3, "{t:?}: {}", rel_rmse(&x, &y));
    }
}

#[test]
fn importance_lowers_the_weighted_error() {
    let n = 1024;
    let x = normal(4 * n, 11);
    // A skewed importance: a few columns matter far more than the rest.
    let imp: Vec<f32> = (0..n)
        .map(|c| {
            if c % 37 == 0 {
                50.0
            } else {
                0.2 + (c % 5) as f32 * 0.1
            }
        })
        .collect();
    let wmse = |y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .enumerate()
            .map(|(i, (a, b))| imp[i % n] as f64 * ((a - b) as f64).powi(2))
            .sum()
    };
    for t in [
        BlockType::Q4_K,
        BlockType::Q5_K,
        BlockType::Q6_K,
        BlockType::IQ4_NL,
        BlockType::Q4_0,
        BlockType::Q4_1,
    ] {
        let plain = wmse(&round_trip(t, &x, n, None));
        let weighted = wmse(&round_trip(t, &x, n, Some(&imp)));
        assert!(
            weighted < 0.9 * plain,
            "{t:?}: weighted {weighted} vs plain {plain}"
        );
    }
}

#[test]
fn zero_importance_is_handled() {
    let x = normal(256, 2);
    let imp = vec![0.0f32; 256];
    for t in FOUNDATION {
        let y = round_trip(t, &x, 256, Some(&imp));
        assert!(y.iter().all(|v| v.is_finite()), "{t:?}");
        assert!(rel_rmse(&x, &y) < 0.15, "{t:?}");
    }
}

#[test]
fn rows_are_independent_of_each_other() {
    let x = normal(3 * 256, 9);
    for t in FOUNDATION {
        let all = encode(t, &x, 256, None);
        let rb = row_bytes(t, 256).unwrap();
        for r in 0..3 {
            assert_eq!(
                &all[r * rb..(r + 1) * rb],
                &encode(t, &x[r * 256..(r + 1) * 256], 256, None)[..],
                "{t:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn decode_is_finite_and_bounded(
        x in prop::collection::vec(-1000.0f32..1000.0, 256),
        scale in prop::sample::select(vec![1.0f32, 1e-3, 1e-30, 60.0]),
        use_imp in any::<bool>(),
    ) {
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let imp: Vec<f32> = (0..256).map(|i| (i % 7) as f32).collect();
        let imp = use_imp.then_some(&imp[..]);
        for t in FOUNDATION {
            let a = encode(t, &x, 256, imp);
            prop_assert_eq!(&a, &encode(t, &x, 256, imp), "{:?} not deterministic", t);
            let mut y = vec![0f32; 256];
            dequantize_rows(t, &a, 256, &mut y).unwrap();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (&v, &u) in y.iter().zip(&x) {
                prop_assert!(v.is_finite());
                // Scales are stored as f16: blocks below its range decode to zero.
                prop_assert!((v - u).abs() <= amax * 0.5 + 1e-4, "{:?}: {} vs {}", t, v, u);
            }
        }
    }

    #[test]
    fn q8_0_error_is_within_half_a_step(x in prop::collection::vec(-100.0f32..100.0, 32)) {
        let y = round_trip(BlockType::Q8_0, &x, 32, None);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3 + 1e-6);
        }
    }

    #[test]
    fn q4_0_error_is_within_one_step(x in prop::collection::vec(-100.0f32..100.0, 32)) {
        let y = round_trip(BlockType::Q4_0, &x, 32, None);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(&y) {
            prop_assert!((a - b).abs() <= amax / 8.0 * 1.01 + 1e-6);
        }
    }
}
