//! Plain float storage: F32, F16 and BF16 (little-endian, one value per "block").
//!
//! F16 rounds like `np.float32.astype(np.float16)` and BF16 like the `gguf`
//! package (nearest even), both via [`crate::half`]. Importance is meaningless
//! here and ignored.

use crate::half::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::layout::BlockType;
use crate::EncodeOptions;

const F32_BYTES: usize = BlockType::F32.block_bytes();
const F16_BYTES: usize = BlockType::F16.block_bytes();
const BF16_BYTES: usize = BlockType::BF16.block_bytes();
// One weight per block: the codecs below map a value to a block.
const _: () = assert!(
    BlockType::F32.block_weights() == 1
        && BlockType::F16.block_weights() == 1
        && BlockType::BF16.block_weights() == 1
);

pub(crate) fn encode_f32(
    src: &[f32],
    _importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (out, v) in dst.chunks_exact_mut(F32_BYTES).zip(src) {
        out.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn decode_f32(src: &[u8], dst: &mut [f32]) {
    for (v, b) in dst.iter_mut().zip(src.chunks_exact(F32_BYTES)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(crate) fn encode_f16(
    src: &[f32],
    _importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (out, v) in dst.chunks_exact_mut(F16_BYTES).zip(src) {
        out.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
    }
}

pub(crate) fn decode_f16(src: &[u8], dst: &mut [f32]) {
    for (v, b) in dst.iter_mut().zip(src.chunks_exact(F16_BYTES)) {
        *v = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

pub(crate) fn encode_bf16(
    src: &[f32],
    _importance: Option<&[f32]>,
    _opts: &EncodeOptions,
    dst: &mut [u8],
) {
    for (out, v) in dst.chunks_exact_mut(BF16_BYTES).zip(src) {
        out.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
    }
}

pub(crate) fn decode_bf16(src: &[u8], dst: &mut [f32]) {
    for (v, b) in dst.iter_mut().zip(src.chunks_exact(BF16_BYTES)) {
        *v = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips_exactly() {
        let x = [0.0f32, -1.5, 3.25e-41, 65504.0, -1e30];
        let mut b = [0u8; 20];
        encode_f32(&x, None, &EncodeOptions::default(), &mut b);
        let mut y = [0f32; 5];
        decode_f32(&b, &mut y);
        assert_eq!(x.map(f32::to_bits), y.map(f32::to_bits));
    }

    #[test]
    fn f16_and_bf16_known_bits() {
        let x = [1.0f32, -2.0, 0.1];
        let mut b = [0u8; 6];
        encode_f16(&x, None, &EncodeOptions::default(), &mut b);
        assert_eq!(b, [0x00, 0x3c, 0x00, 0xc0, 0x66, 0x2e]);
        encode_bf16(&x, None, &EncodeOptions::default(), &mut b);
        assert_eq!(b, [0x80, 0x3f, 0x00, 0xc0, 0xcd, 0x3d]);
        let mut y = [0f32; 3];
        decode_bf16(&b, &mut y);
        assert_eq!(y[..2], [1.0, -2.0]);
        assert!((y[2] - 0.1).abs() < 1e-3);
    }
}
