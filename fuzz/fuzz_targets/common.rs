//! Shared helpers of the codec fuzz targets: a byte cursor that never runs out
//! (missing bytes read as zero) and the block-scale facts the checks rely on.
#![allow(dead_code)]

use aqrecipe_codecs::half::{bf16_to_f32, f16_to_f32};
use aqrecipe_codecs::{BlockType, LAYOUTS};

/// Reads fixed-size values from the fuzz input; past the end every read is 0.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in out.iter_mut() {
            if let Some(&v) = self.data.get(self.pos) {
                *b = v;
            }
            self.pos += 1;
        }
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}

/// Any of the block types, chosen by one byte.
pub fn pick_type(b: u8) -> BlockType {
    LAYOUTS[b as usize % LAYOUTS.len()].block_type
}

/// Offset of a named field inside a block.
fn field_offset(t: BlockType, name: &str) -> Option<usize> {
    let mut off = 0;
    for &(f, n) in t.layout().fields {
        if f == name {
            return Some(off);
        }
        off += n;
    }
    None
}

fn f16_at(block: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[off], block[off + 1]]))
}

/// The documented decode contract: a decoded block is finite whenever every
/// scale it stores (`d`, `dmin`, `m`; IQ1_M's split f16 scale; for the float
/// types the value itself) is finite. Non-finite scales decode to non-finite
/// weights, as they do in llama.cpp.
pub fn stored_scales_finite(t: BlockType, block: &[u8]) -> bool {
    match t {
        BlockType::F32 => f32::from_le_bytes([block[0], block[1], block[2], block[3]]).is_finite(),
        BlockType::F16 => f16_at(block, 0).is_finite(),
        BlockType::BF16 => bf16_to_f32(u16::from_le_bytes([block[0], block[1]])).is_finite(),
        BlockType::IQ1_M => {
            // The f16 super-scale is the top nibble of each of the four u16 scale words.
            let off = field_offset(t, "scales").expect("IQ1_M has scales");
            let mut bits = 0u16;
            for i in 0..4 {
                let w = u16::from_le_bytes([block[off + 2 * i], block[off + 2 * i + 1]]);
                bits |= (w >> 12) << (4 * i);
            }
            f16_to_f32(bits).is_finite()
        }
        _ => ["d", "dmin", "m"]
            .iter()
            .filter_map(|f| field_offset(t, f))
            .all(|off| f16_at(block, off).is_finite()),
    }
}
