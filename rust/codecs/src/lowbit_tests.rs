//! Tests of the low-bit codecs (Q2_K, Q3_K, IQ2_XXS, IQ1_S, IQ1_M, TQ1_0, TQ2_0).
//!
//! Error bound checked by the property tests: for finite blocks whose max
//! |x| is between 1e-30 and 1e4 (no f16 scale clamping), every decoded value
//! is finite and |x - x̂| <= 2.5 * max|x| of its block; with |x| up to 1e30 the
//! decode is finite (scales clamp at the f16 maximum).

use crate::{dequantize_rows, quantize_rows, BlockType, EncodeOptions};
use proptest::prelude::*;

const TYPES: [BlockType; 7] = [
    BlockType::Q3_K, BlockType::Q2_K, BlockType::IQ2_XXS, BlockType::IQ1_M,
    BlockType::IQ1_S, BlockType::TQ2_0, BlockType::TQ1_0,
];

/// Deterministic pseudo-Gaussian data (xorshift + Box-Muller).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n).map(|_| {
        let (u, v) = (next(), next());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }).collect()
}

fn roundtrip(t: BlockType, x: &[f32], row: usize, imp: Option<&[f32]>, opts: &EncodeOptions) -> (Vec<u8>, Vec<f32>) {
    let rb = crate::row_bytes(t, row).unwrap();
    let mut bytes = vec![0u8; x.len() / row * rb];
    quantize_rows(t, x, row, imp, opts, &mut bytes).unwrap();
    let mut out = vec![0f32; x.len()];
    dequantize_rows(t, &bytes, row, &mut out).unwrap();
    (bytes, out)
}

fn wmse(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    let row = w.len();
    x.iter().zip(y).enumerate().map(|(i, (a, b))| w[i % row] as f64 * ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let e: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let s: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (e / s).sqrt()
}

#[test]
fn gaussian_error_is_ordered_and_bounded() {
    let x = gaussian(64 * 512, 1);
    let opts = EncodeOptions::default();
    let mut errs = Vec::new();
    for t in TYPES {
        let (_, y) = roundtrip(t, &x, 512, None, &opts);
        let e = rel_rmse(&x, &y);
        eprintln!("{:8} rel rmse {:.4}", t.name(), e);
        errs.push(e);
    }
    // Q3_K < Q2_K < IQ2_XXS < IQ1_M < IQ1_S
    for i in 0..4 {
        assert!(errs[i] < errs[i + 1], "{:?}", errs);
    }
    let bounds = [0.17, 0.30, 0.36, 0.46, 0.50, 0.85, 0.85];
    for (e, b) in errs.iter().zip(bounds) {
        assert!(*e < b, "{errs:?}");
    }
}

#[test]
fn importance_lowers_weighted_error() {
    let row = 512;
    let x = gaussian(32 * row, 2);
    let imp: Vec<f32> = gaussian(row, 3).iter().map(|v| (2.0 * v).exp()).collect();
    let opts = EncodeOptions::default();
    for t in TYPES {
        let (_, plain) = roundtrip(t, &x, row, None, &opts);
        let (_, weighted) = roundtrip(t, &x, row, Some(&imp), &opts);
        let (a, b) = (wmse(&x, &plain, &imp), wmse(&x, &weighted, &imp));
        eprintln!("{:8} weighted mse {:.5} -> {:.5}", t.name(), a, b);
        assert!(b < 0.97 * a, "{}: {a} -> {b}", t.name());
    }
}

#[test]
fn output_is_deterministic_and_thread_independent() {
    let x = gaussian(8 * 256, 4);
    let opts = EncodeOptions::default();
    for t in TYPES {
        let (a, _) = roundtrip(t, &x, 256, None, &opts);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (b, _) = pool.install(|| roundtrip(t, &x, 256, None, &opts));
        assert_eq!(a, b, "{}", t.name());
    }
}

#[test]
fn zeros_and_constants_round_trip() {
    let opts = EncodeOptions::default();
    for t in TYPES {
        let (bytes, y) = roundtrip(t, &[0.0; 256], 256, None, &opts);
        assert!(y.iter().all(|&v| v == 0.0), "{}", t.name());
        assert_eq!(bytes.len(), t.layout().block_bytes);
        for c in [1.0f32, -3.5, 1e-3] {
            let (_, y) = roundtrip(t, &[c; 256], 256, None, &opts);
            let worst = y.iter().map(|v| (v - c).abs()).fold(0f32, f32::max);
            // all types represent a constant block to within 1/8 of it (IQ1 delta), K-quants exactly-ish
            assert!(worst <= 0.13 * c.abs(), "{} const {c}: {worst}", t.name());
        }
    }
}

#[test]
fn ternary_absmean_scale() {
    let x = gaussian(256, 5);
    let opts = EncodeOptions { ternary_absmean: true };
    let mean = x.iter().map(|v| v.abs() as f64).sum::<f64>() / 256.0;
    for t in [BlockType::TQ1_0, BlockType::TQ2_0] {
        let (_, y) = roundtrip(t, &x, 256, None, &opts);
        let d = y.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!((d - mean).abs() < 1e-3 * mean, "{} {d} {mean}", t.name());
        for (a, b) in x.iter().zip(&y) {
            let q = (a / d as f32).round().clamp(-1.0, 1.0);
            assert_eq!(*b, q * d as f32);
        }
    }
}

#[test]
fn tq_hand_vector() {
    // block of 0.5 except one -2: d = 2, codes round(0.25) = 0, round(-1) = -1
    let mut x = [0.5f32; 256];
    x[7] = -2.0;
    x[200] = 1.0; // round(0.5) = 1 (half away from zero)
    for t in [BlockType::TQ1_0, BlockType::TQ2_0] {
        let (_, y) = roundtrip(t, &x, 256, None, &EncodeOptions::default());
        for (i, v) in y.iter().enumerate() {
            let want = match i { 7 => -2.0, 200 => 2.0, _ => 0.0 };
            assert_eq!(*v, want, "{} at {i}", t.name());
        }
    }
}

fn special_block() -> impl Strategy<Value = Vec<f32>> {
    let scale = prop_oneof![Just(1.0f32), Just(1e-30), Just(1e-40), Just(6e4), Just(1e4), Just(1e30)];
    let shape = prop_oneof![
        Just(0u8), // gaussian
        Just(1),   // constant
        Just(2),   // one outlier
        Just(3),   // sparse
    ];
    (scale, shape, any::<u64>(), 0usize..256).prop_map(|(scale, shape, seed, pos)| {
        let g = gaussian(256, seed);
        let mut v: Vec<f32> = match shape {
            0 => g.iter().map(|a| a * scale / 4.0).collect(),
            1 => vec![scale * if seed % 2 == 0 { 1.0 } else { -1.0 }; 256],
            2 => g.iter().map(|a| a * scale / 1000.0).collect(),
            _ => g.iter().enumerate().map(|(i, a)| if i % 37 == 0 { a * scale / 4.0 } else { 0.0 }).collect(),
        };
        if shape == 2 {
            v[pos] = scale;
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn robust_on_special_blocks(x in special_block(), with_imp in any::<bool>(), absmean in any::<bool>()) {
        let imp: Vec<f32> = (0..256).map(|i| if i % 5 == 0 { 0.0 } else { (i % 17) as f32 * 0.3 }).collect();
        let opts = EncodeOptions { ternary_absmean: absmean };
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in TYPES {
            let (_, y) = roundtrip(t, &x, 256, if with_imp { Some(&imp) } else { None }, &opts);
            prop_assert!(y.iter().all(|v| v.is_finite()), "{} not finite", t.name());
            if amax <= 1e4 && amax >= 1e-30 {
                let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                prop_assert!(worst <= 2.5 * amax, "{}: worst {} amax {}", t.name(), worst, amax);
            }
        }
    }
}

/// `cargo test --release -p aqrecipe-codecs lowbit_speed -- --ignored --nocapture`
#[test]
#[ignore]
fn lowbit_speed() {
    let x = gaussian(64 * 1536, 21);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for t in TYPES {
        let t0 = std::time::Instant::now();
        let (_, y) = pool.install(|| roundtrip(t, &x, 1536, None, &EncodeOptions::default()));
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("{:8} rel rmse {:.4}  {:.2} Mw/s (1 thread, incl. decode)", t.name(), rel_rmse(&x, &y), x.len() as f64 / dt / 1e6);
    }
}

#[test]
fn ternary_neighbours_are_nearest() {
    use crate::iq_grids::{ternary_grid, ternary_key};
    let tg = ternary_grid();
    assert_eq!(tg.on_grid.iter().filter(|&&v| v >= 0).count(), 2048);
    // the all-zero vector and a grid entry map to themselves; off-grid keys have candidates
    for (i, g) in tg.values.iter().enumerate().step_by(97) {
        let t: [i8; 8] = std::array::from_fn(|k| g[k] as i8);
        assert_eq!(tg.on_grid[ternary_key(&t)], i as i16);
    }
    for key in 0..6561 {
        let n = tg.chunk_start[key + 1] - tg.chunk_start[key];
        assert_eq!(n == 0, tg.on_grid[key] >= 0, "key {key}");
    }
}
