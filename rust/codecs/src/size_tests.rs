//! Sizes from the caller (row lengths, shapes, buffer lengths) at their extremes:
//! every size function and both row codecs return a value or a `CodecError`,
//! never panic (the test profile keeps overflow checks on, so a wrapping `*`
//! fails here) and never pass a wrapped product for a small one (issue 13.4).
//! Expected values are computed in u128, where nothing wraps.

use crate::{
    decoded_len, dequantize_rows, element_count, quantize_rows, row_bytes, tensor_bytes, BlockType, CodecError,
    EncodeOptions, LAYOUTS,
};
use proptest::prelude::*;

const MAX: u128 = isize::MAX as u128;

fn any_type() -> impl Strategy<Value = BlockType> {
    (0..LAYOUTS.len()).prop_map(|i| LAYOUTS[i].block_type)
}

/// 0, 1, small, block multiples, powers of two, values around isize::MAX and usize::MAX, anything.
fn extreme() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1usize),
        Just(usize::MAX),
        Just(isize::MAX as usize),
        Just(isize::MAX as usize + 1),
        (0..64u32).prop_map(|s| 1usize << s),
        (0..64u32, 1..300usize).prop_map(|(s, k)| (1usize << s).saturating_mul(k)),
        (0..4usize).prop_map(|k| usize::MAX - 255 - k * 256),
        (0..4usize).prop_map(|k| ((isize::MAX as usize / 4) & !255) - 256 + k * 256), // F32 rows near the limit
        0..2048usize,
        any::<usize>(),
    ]
}

fn expected_row_bytes(t: BlockType, row_len: usize) -> Option<u128> {
    let l = t.layout();
    if row_len == 0 || row_len % l.block_weights != 0 || row_len as u128 > MAX {
        return None;
    }
    Some((row_len / l.block_weights) as u128 * l.block_bytes as u128).filter(|&n| n <= MAX)
}

/// Product of the non-zero dims, None once it passes isize::MAX (so u128 never wraps either).
fn nonzero_product(shape: &[usize]) -> Option<u128> {
    shape.iter().try_fold(1u128, |n, &d| Some(n * d.max(1) as u128).filter(|&p| p <= MAX))
}

fn overflow(r: &Result<usize, CodecError>) -> bool {
    matches!(r, Err(CodecError::SizeOverflow { .. }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn row_bytes_is_exact_or_an_error(t in any_type(), row_len in extreme()) {
        let got = row_bytes(t, row_len);
        match expected_row_bytes(t, row_len) {
            Some(n) => prop_assert_eq!(got, Ok(n as usize)),
            None => prop_assert!(got.is_err()),
        }
    }

    #[test]
    fn tensor_bytes_is_exact_or_an_error(t in any_type(), rows in extreme(), row_len in extreme()) {
        let got = tensor_bytes(t, rows, row_len);
        match expected_row_bytes(t, row_len).map(|rb| rb * rows as u128) {
            Some(n) if n <= MAX => prop_assert_eq!(got, Ok(n as usize)),
            Some(_) => prop_assert!(overflow(&got), "{:?}", got),
            None => prop_assert!(got.is_err()),
        }
    }

    #[test]
    fn element_count_is_exact_or_an_overflow(shape in prop::collection::vec(extreme(), 0..6), item in 1..9usize) {
        let got = element_count(&shape, item);
        match nonzero_product(&shape).filter(|&n| n * item as u128 <= MAX) {
            Some(n) => prop_assert_eq!(got, Ok(if shape.contains(&0) { 0 } else { n as usize })),
            None => prop_assert!(overflow(&got), "{:?}", got),
        }
    }

    #[test]
    fn decoded_len_accepts_exactly_the_matching_byte_count(
        t in any_type(),
        shape in prop::collection::vec(extreme(), 0..5),
        n_bytes in extreme(),
    ) {
        // The byte count this shape needs, if it is a real one.
        let nonzero = nonzero_product(&shape);
        let count: u128 = if shape.contains(&0) { 0 } else { nonzero.unwrap_or(0) };
        let needed = shape.last().and_then(|&row_len| {
            let rb = expected_row_bytes(t, row_len)?;
            nonzero.filter(|&n| n * 4 <= MAX)?; // numpy's limit on a float32 array, empty or not
            Some(count / row_len as u128 * rb).filter(|&b| b <= MAX)
        });
        if let Some(b) = needed {
            prop_assert_eq!(decoded_len(t, b as usize, &shape), Ok(count as usize));
        }
        let got = decoded_len(t, n_bytes, &shape);
        prop_assert_eq!(got.is_ok(), needed == Some(n_bytes as u128), "{:?}", got);
        if let Ok(n) = got {
            let row_len = *shape.last().unwrap();
            let count: u128 = shape.iter().map(|&d| d as u128).product();
            prop_assert_eq!(n as u128, count);
            prop_assert!(count * 4 <= MAX);
            let rb = expected_row_bytes(t, row_len).unwrap();
            prop_assert_eq!(n_bytes as u128, count / row_len as u128 * rb);
        }
    }

    /// Real (small) buffers with extreme row lengths: the codecs check before they touch memory.
    #[test]
    fn row_codecs_never_panic_on_extreme_row_lengths(
        t in any_type(),
        row_len in extreme(),
        n_values in 0..600usize,
        n_bytes in 0..700usize,
    ) {
        let data = vec![0.25f32; n_values];
        let mut packed = vec![0u8; n_bytes];
        let encoded = quantize_rows(t, &data, row_len, None, &EncodeOptions::default(), &mut packed);
        let valid = expected_row_bytes(t, row_len)
            .filter(|_| n_values % row_len == 0)
            .map(|rb| rb * (n_values / row_len) as u128 == n_bytes as u128)
            .unwrap_or(false);
        prop_assert_eq!(encoded.is_ok(), valid, "{:?}", encoded);
        let mut out = vec![0f32; n_values];
        let decoded = dequantize_rows(t, &packed, row_len, &mut out);
        prop_assert_eq!(decoded.is_ok(), valid, "{:?}", decoded);
    }
}

/// The case of the issue: 2^62 * 4 * 32 is 0 mod 2^64; it must not pass for an empty tensor.
#[test]
fn a_shape_whose_product_wraps_is_refused() {
    let shape = [1usize << 62, 4, 32];
    assert!(matches!(decoded_len(BlockType::Q8_0, 0, &shape), Err(CodecError::SizeOverflow { .. })));
    assert!(matches!(element_count(&shape, 4), Err(CodecError::SizeOverflow { .. })));
    // An empty tensor with a huge axis is refused too (numpy cannot hold that shape either)...
    assert!(matches!(element_count(&[0, 1 << 62], 4), Err(CodecError::SizeOverflow { .. })));
    assert_eq!(element_count(&[0, 1 << 62], 1), Ok(0));
    // ...while an honest empty one is fine.
    assert_eq!(decoded_len(BlockType::Q8_0, 0, &[0, 4, 32]), Ok(0));
    assert_eq!(decoded_len(BlockType::Q8_0, 68, &[2, 32]), Ok(64));
}

/// F32 rows of 2^62 weights would need 2^64 bytes: `row_len * 4` wrapped to 0.
#[test]
fn a_row_whose_byte_size_wraps_is_refused() {
    assert!(matches!(row_bytes(BlockType::F32, 1 << 62), Err(CodecError::SizeOverflow { .. })));
    let mut out: [u8; 0] = [];
    let r = quantize_rows(BlockType::F32, &[], 1 << 62, None, &EncodeOptions::default(), &mut out);
    assert!(matches!(r, Err(CodecError::SizeOverflow { .. })), "{r:?}");
}
