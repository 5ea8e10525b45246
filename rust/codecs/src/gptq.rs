//! Error-compensating (GPTQ-style) rounding into the GGUF block formats.
//!
//! The layer's output is `W X`; the calibration inputs give the Hessian
//! `H = X Xᵀ` (one `row_len × row_len` matrix per distinct input). Columns are
//! quantized in order and each column's rounding error is pushed onto the
//! columns not yet quantized, so the remaining weights absorb it (optimal brain
//! surgeon, in GPTQ's Cholesky form: `H⁻¹ = Uᵀ U`, `U` upper triangular).
//!
//! GGUF blocks share a scale over `block_weights` consecutive columns (32 or 256)
//! and have no column permutation, so this works in **block groups**: the columns of
//! one block are encoded together by the format's own per-block encoder (the same
//! scale and code search as round-to-nearest, on the error-updated weights, with the
//! importance as its diagonal weight), and then their errors are propagated; in-group
//! propagation with the codes fixed is the triangular solve of the block form
//! `E = (W_S − Q_S) U_SS⁻¹`, `W_rest −= E U_S,rest`, so the result does not depend on
//! the order inside a group. `act_order` therefore orders whole groups (by the sum of
//! `diag(H)` over the group, descending); the bytes stay in the file's column order.
//!
//! Every row is independent given `U`, so rows run in parallel (chunks of
//! [`ROW_CHUNK`] rows share each row of `U` in cache) and the output does not depend
//! on the thread count. `block_size` is the lazy-batch width (rounded up to a multiple
//! of the block length): errors of a batch are applied to the columns after it in one
//! pass. It changes speed and float rounding order only.

use rayon::prelude::*;

use crate::error::CodecError;
use crate::layout::BlockType;
use crate::EncodeOptions;

/// Rows encoded together by one task: they stream each row of `U` once.
const ROW_CHUNK: usize = 8;

/// How the sequential update runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Dampening added to `diag(H)`, as a fraction of its mean (GPTQ's `percdamp`).
    pub damp: f64,
    /// Lazy-batch width in columns (rounded up to a multiple of the block length).
    pub block_size: usize,
    /// Quantize block groups in order of decreasing `sum(diag(H))` over the group.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { damp: 0.01, block_size: 128, act_order: false }
    }
}

/// `U` with `H⁻¹ = Uᵀ U` (upper triangular, row-major, `n × n`, f32) for the
/// damped, group-permuted Hessian.
struct Factor {
    u: Vec<f32>,
    n: usize,
}

fn check_options(t: BlockType, g: &GptqOptions) -> Result<(), CodecError> {
    if t.layout().block_weights == 1 {
        return Err(CodecError::GptqOption {
            what: format!("{} is a float type; GPTQ rounding applies to block-quantized types", t.name()),
        });
    }
    if !g.damp.is_finite() || g.damp < 0.0 {
        return Err(CodecError::GptqOption { what: format!("damp must be a finite number >= 0, got {}", g.damp) });
    }
    if g.block_size == 0 {
        return Err(CodecError::GptqOption { what: "block_size must be at least 1".into() });
    }
    Ok(())
}

/// Column order: whole block groups, by decreasing `sum(diag(H))` when `act_order`
/// (ties keep file order), each group's columns in file order.
fn column_order(diag: &[f64], bw: usize, act_order: bool) -> Vec<usize> {
    let n_groups = diag.len() / bw;
    let mut groups: Vec<usize> = (0..n_groups).collect();
    if act_order {
        let mass: Vec<f64> = (0..n_groups).map(|g| diag[g * bw..(g + 1) * bw].iter().sum()).collect();
        groups.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]).then(a.cmp(&b)));
    }
    groups.iter().flat_map(|&g| g * bw..(g + 1) * bw).collect()
}

/// Lower Cholesky factor of the symmetric `a` (row-major `n × n`), in place.
/// Returns the first column whose pivot is not positive.
fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    for j in 0..n {
        let row_j = &mut a[j * n..(j + 1) * n];
        let s: f64 = row_j[..j].iter().map(|v| v * v).sum();
        let pivot = row_j[j] - s;
        if pivot.is_nan() || pivot <= 0.0 || pivot.is_infinite() {
            return Err(j);
        }
        let d = pivot.sqrt();
        row_j[j] = d;
        for v in row_j[j + 1..].iter_mut() {
            *v = 0.0;
        }
        let row_j: Vec<f64> = row_j[..j].to_vec();
        let below = &mut a[(j + 1) * n..];
        below.par_chunks_mut(n).for_each(|row_i| {
            let dot: f64 = row_i[..j].iter().zip(&row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / d;
        });
    }
    Ok(())
}

/// Inverse of the lower triangular `l` (row-major `n × n`), as row-major `n × n`.
fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    // Column c of L⁻¹ solves L m = e_c by forward substitution (m[i] = 0 for i < c).
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|c| {
            let mut m = vec![0f64; n];
            m[c] = 1.0 / l[c * n + c];
            for i in c + 1..n {
                let row = &l[i * n..i * n + i];
                let dot: f64 = row[c..].iter().zip(&m[c..i]).map(|(x, y)| x * y).sum();
                m[i] = -dot / l[i * n + i];
            }
            m
        })
        .collect();
    let mut out = vec![0f64; n * n];
    for (c, m) in cols.iter().enumerate() {
        for i in c..n {
            out[i * n + c] = m[i];
        }
    }
    out
}

/// Damp the permuted Hessian and factor its inverse: with `J` the reversal,
/// `J H J = C Cᵀ` gives `H = R Rᵀ` (`R = J C J`, upper) and `H⁻¹ = Uᵀ U` with
/// `U = R⁻¹ = J C⁻¹ J`: one Cholesky and one triangular inverse.
fn factor(hessian: &[f32], n: usize, order: &[usize], damp: f64) -> Result<Factor, CodecError> {
    let mut diag: Vec<f64> = order.iter().map(|&c| hessian[c * n + c] as f64).collect();
    // A column whose input is always zero does not affect the output: give it a unit pivot.
    for d in diag.iter_mut() {
        if *d == 0.0 {
            *d = 1.0;
        }
    }
    let mean = diag.iter().sum::<f64>() / n as f64;
    let lambda = damp * mean;
    // a[i][j] = Hp[n-1-i][n-1-j], Hp the permuted Hessian
    let mut a = vec![0f64; n * n];
    a.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let pi = order[n - 1 - i];
        for (j, v) in row.iter_mut().enumerate() {
            let pj = order[n - 1 - j];
            *v = if i == j { diag[n - 1 - i] + lambda } else { hessian[pi * n + pj] as f64 };
        }
    });
    cholesky_lower(&mut a, n).map_err(|j| CodecError::NotPositiveDefinite { col: order[n - 1 - j], damp })?;
    let m = invert_lower(&a, n);
    let mut u = vec![0f32; n * n];
    u.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate().skip(i) {
            *v = m[(n - 1 - i) * n + (n - 1 - j)] as f32;
        }
    });
    Ok(Factor { u, n })
}

/// Encode `data` (`n_rows × row_len`, row-major) into `out` with error-compensating
/// rounding against `hessian` (`row_len × row_len`, row-major, symmetric: `X Xᵀ` of
/// the layer's input, any positive scale). `importance` (one weight per column) is the
/// diagonal weight of each block's search; without it `diag(hessian)` is used, so a
/// diagonal Hessian gives exactly the bytes of [`crate::quantize_rows`] with
/// `importance = diag(H)`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_rows_gptq(
    t: BlockType,
    data: &[f32],
    row_len: usize,
    hessian: &[f32],
    importance: Option<&[f32]>,
    gopts: &GptqOptions,
    opts: &EncodeOptions,
    out: &mut [u8],
) -> Result<(), CodecError> {
    check_options(t, gopts)?;
    let rb = crate::row_bytes(t, row_len)?;
    if data.len() % row_len != 0 {
        return Err(CodecError::ShapeMismatch { len: data.len(), row_len });
    }
    let n_rows = data.len() / row_len;
    let expected = crate::tensor_bytes(t, n_rows, row_len)?;
    if out.len() != expected {
        return Err(CodecError::ByteLength { expected, got: out.len() });
    }
    let n = row_len;
    let n2 = crate::element_count(&[n, n], 8)?;
    if hessian.len() != n2 {
        return Err(CodecError::HessianShape { row_len, got: hessian.len() });
    }
    if let Some(i) = hessian.iter().position(|v| !v.is_finite()) {
        return Err(CodecError::BadHessian { what: format!("entry ({}, {}) is {}", i / n, i % n, hessian[i]) });
    }
    if let Some(c) = (0..n).find(|&c| hessian[c * n + c] < 0.0) {
        return Err(CodecError::BadHessian {
            what: format!("diagonal entry {c} is {}; X Xᵀ has a non-negative diagonal", hessian[c * n + c]),
        });
    }
    crate::check_importance(importance, row_len)?;
    if let Some((row, col, value)) = crate::find_non_finite(data, row_len) {
        return Err(CodecError::NonFinite { row, col, value });
    }
    if n_rows == 0 {
        return Ok(());
    }
    let layout = t.layout();
    let (bw, bb) = (layout.block_weights, layout.block_bytes);
    let diag: Vec<f64> = (0..n).map(|c| hessian[c * n + c] as f64).collect();
    let order = column_order(&diag, bw, gopts.act_order);
    let f = factor(hessian, n, &order, gopts.damp)?;
    // The block search's weights, in processing order.
    let weight: Vec<f32> = match importance {
        Some(w) => order.iter().map(|&c| w[c]).collect(),
        None => order.iter().map(|&c| hessian[c * n + c]).collect(),
    };
    let batch = gopts.block_size.div_ceil(bw).max(1) * bw;
    let (encode, decode) = crate::codec(t);

    out.par_chunks_mut(rb * ROW_CHUNK)
        .zip(data.par_chunks(row_len * ROW_CHUNK))
        .for_each(|(dst, src)| {
            let rows = src.len() / row_len;
            // Working rows in processing order.
            let mut w: Vec<f32> = Vec::with_capacity(rows * n);
            for r in 0..rows {
                let row = &src[r * n..(r + 1) * n];
                w.extend(order.iter().map(|&c| row[c]));
            }
            let mut err = vec![0f32; rows * batch];
            let mut q = vec![0f32; bw];
            let mut i1 = 0;
            while i1 < n {
                let i2 = (i1 + batch).min(n);
                for r in 0..rows {
                    let wr = &mut w[r * n..(r + 1) * n];
                    let er = &mut err[r * batch..(r + 1) * batch];
                    for g0 in (i1..i2).step_by(bw) {
                        let file_block = order[g0] / bw;
                        let block = &mut dst[r * rb + file_block * bb..r * rb + (file_block + 1) * bb];
                        encode(&wr[g0..g0 + bw], Some(&weight[g0..g0 + bw]), opts, block);
                        decode(block, &mut q);
                        for j in g0..g0 + bw {
                            let uj = &f.u[j * f.n..(j + 1) * f.n];
                            let e = (wr[j] - q[j - g0]) / uj[j];
                            er[j - i1] = e;
                            // in-batch columns after j (the rest waits for the batch end)
                            for (x, &u) in wr[j + 1..i2].iter_mut().zip(&uj[j + 1..i2]) {
                                *x -= e * u;
                            }
                        }
                    }
                }
                if i2 < n {
                    for k in i1..i2 {
                        let uk = &f.u[k * f.n + i2..(k + 1) * f.n];
                        for r in 0..rows {
                            let e = err[r * batch + (k - i1)];
                            if e != 0.0 {
                                let wr = &mut w[r * n + i2..(r + 1) * n];
                                for (x, &u) in wr.iter_mut().zip(uk) {
                                    *x -= e * u;
                                }
                            }
                        }
                    }
                }
                i1 = i2;
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dequantize_rows, quantize_rows, BlockType::*};

    /// Small deterministic generator (xorshift), so the tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn normal(&mut self) -> f32 {
            (0..6).map(|_| self.next()).sum::<f32>() / 1.41
        }
    }

    const TYPES: [BlockType; 16] =
        [Q4_K, Q5_K, Q6_K, Q3_K, Q2_K, Q4_0, Q5_0, Q8_0, Q4_1, Q5_1, IQ4_NL, IQ2_XXS, IQ1_S, IQ1_M, TQ1_0, TQ2_0];

    fn enc(t: BlockType, w: &[f32], n: usize, imp: Option<&[f32]>) -> Vec<u8> {
        let mut out = vec![0u8; crate::tensor_bytes(t, w.len() / n, n).unwrap()];
        quantize_rows(t, w, n, imp, &EncodeOptions::default(), &mut out).unwrap();
        out
    }

    fn gptq(t: BlockType, w: &[f32], n: usize, h: &[f32], g: &GptqOptions) -> Vec<u8> {
        let mut out = vec![0u8; crate::tensor_bytes(t, w.len() / n, n).unwrap()];
        quantize_rows_gptq(t, w, n, h, None, g, &EncodeOptions::default(), &mut out).unwrap();
        out
    }

    fn dec(t: BlockType, b: &[u8], len: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; len];
        dequantize_rows(t, b, n, &mut out).unwrap();
        out
    }

    /// X (n × samples, row-major) with correlated columns: a low-rank part plus noise.
    fn inputs(rng: &mut Rng, n: usize, samples: usize) -> Vec<f32> {
        let rank = 8;
        let basis: Vec<f32> = (0..n * rank).map(|_| rng.normal()).collect();
        let scale: Vec<f32> = (0..n).map(|_| 0.5 + rng.next().abs() * 2.0).collect();
        let mut x = vec![0f32; n * samples];
        for s in 0..samples {
            let z: Vec<f32> = (0..rank).map(|_| rng.normal()).collect();
            for c in 0..n {
                let low: f32 = (0..rank).map(|k| basis[c * rank + k] * z[k]).sum();
                x[c * samples + s] = scale[c] * (low + 0.3 * rng.normal());
            }
        }
        x
    }

    fn hessian(x: &[f32], n: usize, samples: usize) -> Vec<f32> {
        let mut h = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                let xi = &x[i * samples..(i + 1) * samples];
                let xj = &x[j * samples..(j + 1) * samples];
                h[i * n + j] = xi.iter().zip(xj).map(|(a, b)| a * b).sum();
            }
        }
        h
    }

    /// ‖(W − Ŵ) X‖² over the samples.
    fn out_err(w: &[f32], wq: &[f32], x: &[f32], n: usize, samples: usize) -> f64 {
        let rows = w.len() / n;
        let mut total = 0f64;
        for r in 0..rows {
            for s in 0..samples {
                let y: f64 = (0..n).map(|c| ((w[r * n + c] - wq[r * n + c]) * x[c * samples + s]) as f64).sum();
                total += y * y;
            }
        }
        total
    }

    #[test]
    fn row_encoders_are_block_local() {
        // The update encodes one block at a time: a row's bytes must be its blocks' bytes.
        let mut rng = Rng(7);
        let n = 512;
        let w: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let imp: Vec<f32> = (0..n).map(|_| rng.next().abs() + 0.1).collect();
        for t in TYPES {
            let bw = t.layout().block_weights;
            let whole = enc(t, &w, n, Some(&imp));
            let parts: Vec<u8> =
                (0..n / bw).flat_map(|b| enc(t, &w[b * bw..(b + 1) * bw], bw, Some(&imp[b * bw..(b + 1) * bw]))).collect();
            assert_eq!(whole, parts, "{}", t.name());
        }
    }

    #[test]
    fn diagonal_hessian_is_round_to_nearest() {
        let mut rng = Rng(11);
        let (rows, n) = (5, 512);
        let w: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
        let mut h = vec![0f32; n * n];
        for c in 0..n {
            h[c * n + c] = 0.2 + rng.next().abs() * 3.0;
        }
        let d: Vec<f32> = (0..n).map(|c| h[c * n + c]).collect();
        for t in TYPES {
            for act_order in [false, true] {
                let g = GptqOptions { act_order, ..Default::default() };
                assert_eq!(gptq(t, &w, n, &h, &g), enc(t, &w, n, Some(&d)), "{} act_order={act_order}", t.name());
            }
        }
    }

    #[test]
    fn duplicated_input_error_moves_to_the_twin_block() {
        // Block 1's input is block 0's (x_{32+i} = x_i): the output depends on w_i + w_{32+i}
        // only, so the optimum for block 1 given block 0's codes is the rounding of
        // w1 + (w0 − ŵ0); GPTQ (damp → 0) gives exactly that.
        let mut rng = Rng(3);
        let (rows, bw, samples) = (4, 32, 256);
        let n = 2 * bw;
        let z = inputs(&mut rng, bw, samples);
        let mut x = z.clone();
        x.extend_from_slice(&z);
        let h = hessian(&x, n, samples);
        let w: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
        for t in [Q4_0, Q5_0, Q8_0, IQ4_NL] {
            let g = GptqOptions { damp: 1e-7, block_size: 32, act_order: false };
            let got = dec(t, &gptq(t, &w, n, &h, &g), w.len(), n);
            let diag: Vec<f32> = (0..n).map(|c| h[c * n + c]).collect();
            for r in 0..rows {
                let w0 = &w[r * n..r * n + bw];
                let q0 = dec(t, &enc(t, w0, bw, Some(&diag[..bw])), bw, bw);
                assert_eq!(&got[r * n..r * n + bw], &q0[..], "{} block 0 is plain rounding", t.name());
                let target: Vec<f32> = (0..bw).map(|i| w[r * n + bw + i] + w0[i] - q0[i]).collect();
                let want = dec(t, &enc(t, &target, bw, Some(&diag[bw..])), bw, bw);
                let diff = got[r * n + bw..(r + 1) * n].iter().zip(&want).filter(|(a, b)| (*a - *b).abs() > 1e-6).count();
                assert!(diff <= 1, "{} row {r}: {diff} of block 1 differ from the rounding of w1 + e0", t.name());
            }
            let e_g = out_err(&w, &got, &x, n, samples);
            let e_r = out_err(&w, &dec(t, &enc(t, &w, n, Some(&diag)), w.len(), n), &x, n, samples);
            assert!(e_g < 0.75 * e_r, "{}: gptq {e_g} vs rtn {e_r}", t.name());
        }
    }

    #[test]
    fn held_out_output_error_not_above_rtn() {
        let (rows, n, samples) = (16, 512, 2048);
        for seed in [1u64, 2] {
            let mut rng = Rng(seed * 1000 + 17);
            let x_all = inputs(&mut rng, n, 2 * samples);
            let split = |half: usize| -> Vec<f32> {
                (0..n)
                    .flat_map(|c| x_all[c * 2 * samples + half * samples..c * 2 * samples + (half + 1) * samples].to_vec())
                    .collect()
            };
            let (xc, xh) = (split(0), split(1));
            let h = hessian(&xc, n, samples);
            let diag: Vec<f32> = (0..n).map(|c| h[c * n + c]).collect();
            let w: Vec<f32> = (0..rows * n).map(|_| rng.normal() * 0.05).collect();
            for t in TYPES {
                let rtn = dec(t, &enc(t, &w, n, Some(&diag)), w.len(), n);
                let e_r = out_err(&w, &rtn, &xh, n, samples);
                for act_order in [false, true] {
                    let g = GptqOptions { act_order, ..Default::default() };
                    let q = dec(t, &gptq(t, &w, n, &h, &g), w.len(), n);
                    let e_g = out_err(&w, &q, &xh, n, samples);
                    assert!(e_g <= e_r, "{} seed {seed} act_order={act_order}: gptq {e_g} > rtn {e_r}", t.name());
                }
            }
        }
    }

    #[test]
    fn batch_width_and_threads_do_not_change_much() {
        let mut rng = Rng(5);
        let (rows, n, samples) = (9, 512, 1024);
        let x = inputs(&mut rng, n, samples);
        let h = hessian(&x, n, samples);
        let w: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
        let a = gptq(Q8_0, &w, n, &h, &GptqOptions { block_size: 32, ..Default::default() });
        let b = gptq(Q8_0, &w, n, &h, &GptqOptions { block_size: 512, ..Default::default() });
        let (da, db) = (dec(Q8_0, &a, w.len(), n), dec(Q8_0, &b, w.len(), n));
        let (ea, eb) = (out_err(&w, &da, &x, n, samples), out_err(&w, &db, &x, n, samples));
        assert!((ea - eb).abs() <= 0.02 * ea, "{ea} vs {eb}");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(pool.install(|| gptq(Q8_0, &w, n, &h, &GptqOptions::default())), gptq(Q8_0, &w, n, &h, &GptqOptions::default()));
    }

    #[test]
    fn factor_inverts_the_damped_hessian() {
        let mut rng = Rng(9);
        let (n, samples) = (64, 256);
        let x = inputs(&mut rng, n, samples);
        let h = hessian(&x, n, samples);
        let order: Vec<usize> = (0..n).collect();
        let f = factor(&h, n, &order, 0.01).unwrap();
        let mean = (0..n).map(|c| h[c * n + c] as f64).sum::<f64>() / n as f64;
        // (Uᵀ U) (H + λI) = I
        for i in 0..n {
            for j in 0..n {
                let mut s = 0f64;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|m| f.u[m * n + i] as f64 * f.u[m * n + k] as f64).sum();
                    let hk = h[k * n + j] as f64 + if k == j { 0.01 * mean } else { 0.0 };
                    s += hinv_ik * hk;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-3, "({i},{j}) = {s}");
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let n = 32;
        let w = vec![0.5f32; n];
        let mut out = vec![0u8; crate::tensor_bytes(Q8_0, 1, n).unwrap()];
        let g = GptqOptions::default();
        let o = EncodeOptions::default();
        let h = vec![0f32; n * n - 1];
        assert!(matches!(quantize_rows_gptq(Q8_0, &w, n, &h, None, &g, &o, &mut out), Err(CodecError::HessianShape { .. })));
        let mut h = vec![0f32; n * n];
        h[3] = f32::NAN;
        assert!(matches!(quantize_rows_gptq(Q8_0, &w, n, &h, None, &g, &o, &mut out), Err(CodecError::BadHessian { .. })));
        let mut h = vec![0f32; n * n];
        for c in 0..n {
            h[c * n + c] = 1.0;
        }
        h[1] = 5.0;
        h[n] = 5.0; // |H01| > sqrt(H00 H11): not positive semi-definite
        let g0 = GptqOptions { damp: 0.0, ..g };
        assert!(matches!(quantize_rows_gptq(Q8_0, &w, n, &h, None, &g0, &o, &mut out), Err(CodecError::NotPositiveDefinite { .. })));
        let bad = GptqOptions { damp: -1.0, ..g };
        assert!(matches!(quantize_rows_gptq(Q8_0, &w, n, &h, None, &bad, &o, &mut out), Err(CodecError::GptqOption { .. })));
        let mut f16 = vec![0u8; 64];
        assert!(matches!(quantize_rows_gptq(F16, &w, n, &h, None, &g, &o, &mut f16), Err(CodecError::GptqOption { .. })));
    }

    #[test]
    fn zero_hessian_is_plain_rounding() {
        // No calibration signal at all: every pivot is a unit pivot, no error moves.
        let mut rng = Rng(13);
        let n = 256;
        let w: Vec<f32> = (0..2 * n).map(|_| rng.normal()).collect();
        let h = vec![0f32; n * n];
        let zeros = vec![0f32; n];
        for t in [Q4_K, IQ2_XXS, Q8_0] {
            assert_eq!(gptq(t, &w, n, &h, &GptqOptions::default()), enc(t, &w, n, Some(&zeros)), "{}", t.name());
        }
    }
}
