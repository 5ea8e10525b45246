//! The one table of block layouts: weights per block and bytes as a sum of
//! named fields. Every codec takes its block weights, block bytes and field
//! offsets from here (`const` lookups, so they compile to the same constants);
//! Python's `aqrecipe.quant.blocktypes` builds its table from this one through
//! `aqrecipe._packer.layouts()`, and a test checks it against the `gguf` package.

use crate::error::CodecError;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ2_XXS,
    IQ1_S,
    IQ1_M,
    TQ1_0,
    TQ2_0,
}

/// One block layout: the GGML type id, weights per block and its byte fields.
#[derive(Debug, Clone, Copy)]
pub struct BlockLayout {
    pub block_type: BlockType,
    pub name: &'static str,
    pub ggml_type_id: u32,
    pub block_weights: usize,
    pub block_bytes: usize,
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! layout {
    ($t:ident, $id:expr, $w:expr, [$(($f:expr, $b:expr)),*]) => {
        BlockLayout {
            block_type: BlockType::$t,
            name: stringify!($t),
            ggml_type_id: $id,
            block_weights: $w,
            block_bytes: 0 $(+ $b)*,
            fields: &[$(($f, $b)),*],
        }
    };
}

pub const LAYOUTS: &[BlockLayout] = &[
    layout!(F32, 0, 1, [("value", 4)]),
    layout!(F16, 1, 1, [("value", 2)]),
    layout!(BF16, 30, 1, [("value", 2)]),
    layout!(Q8_0, 8, 32, [("d", 2), ("qs", 32)]),
    layout!(Q4_0, 2, 32, [("d", 2), ("qs", 16)]),
    layout!(Q4_1, 3, 32, [("d", 2), ("m", 2), ("qs", 16)]),
    layout!(Q5_0, 6, 32, [("d", 2), ("qh", 4), ("qs", 16)]),
    layout!(Q5_1, 7, 32, [("d", 2), ("m", 2), ("qh", 4), ("qs", 16)]),
    layout!(Q2_K, 10, 256, [("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)]),
    layout!(Q3_K, 11, 256, [("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)]),
    layout!(Q4_K, 12, 256, [("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)]),
    layout!(Q5_K, 13, 256, [("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)]),
    layout!(Q6_K, 14, 256, [("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)]),
    layout!(IQ4_NL, 20, 32, [("d", 2), ("qs", 16)]),
    layout!(IQ2_XXS, 16, 256, [("d", 2), ("qs", 64)]),
    layout!(IQ1_S, 19, 256, [("d", 2), ("qs", 32), ("qh", 16)]),
    layout!(IQ1_M, 29, 256, [("qs", 32), ("qh", 16), ("scales", 8)]),
    layout!(TQ1_0, 34, 256, [("qs", 48), ("qh", 4), ("d", 2)]),
    layout!(TQ2_0, 35, 256, [("qs", 64), ("d", 2)]),
];

/// `a == b` for `&str`, usable in `const` context.
const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The weights per block shared by all of `types` (a compile error in `const` context if
/// they differ): the block length of a codec module that serves several types.
pub(crate) const fn shared_block_weights(types: &[BlockType]) -> usize {
    let n = types[0].block_weights();
    let mut i = 1;
    while i < types.len() {
        assert!(types[i].block_weights() == n, "types of one codec module differ in block weights");
        i += 1;
    }
    n
}

impl BlockType {
    /// This type's entry of [`LAYOUTS`].
    pub const fn layout(self) -> &'static BlockLayout {
        let mut i = 0;
        while i < LAYOUTS.len() {
            if LAYOUTS[i].block_type as u8 == self as u8 {
                return &LAYOUTS[i];
            }
            i += 1;
        }
        panic!("every BlockType has a layout")
    }

    /// Weights per block (1 for the float types).
    pub const fn block_weights(self) -> usize {
        self.layout().block_weights
    }

    /// Bytes per block: the sum of its fields.
    pub const fn block_bytes(self) -> usize {
        self.layout().block_bytes
    }

    /// Byte range of the field `name` inside one block (a compile error in `const`
    /// context if the layout has no such field).
    pub const fn field(self, name: &str) -> core::ops::Range<usize> {
        let fields = self.layout().fields;
        let mut start = 0;
        let mut i = 0;
        while i < fields.len() {
            let (field, size) = fields[i];
            if str_eq(field, name) {
                return start..start + size;
            }
            start += size;
            i += 1;
        }
        panic!("no such field in this block layout")
    }

    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// Look a type up by its GGML name (`"Q4_K"`, case-sensitive).
    pub fn from_name(name: &str) -> Result<BlockType, CodecError> {
        LAYOUTS
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.block_type)
            .ok_or_else(|| CodecError::UnknownType(name.to_string()))
    }

    /// Bits per weight of the format.
    pub fn bits_per_weight(self) -> f64 {
        let l = self.layout();
        8.0 * l.block_bytes as f64 / l.block_weights as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_format() {
        let expect = [
            ("Q8_0", 34), ("Q4_0", 18), ("Q4_1", 20), ("Q5_0", 22), ("Q5_1", 24), ("Q2_K", 84),
            ("Q3_K", 110), ("Q4_K", 144), ("Q5_K", 176), ("Q6_K", 210), ("IQ4_NL", 18),
            ("IQ2_XXS", 66), ("IQ1_S", 50), ("IQ1_M", 56), ("TQ1_0", 54), ("TQ2_0", 66),
        ];
        for (name, bytes) in expect {
            assert_eq!(BlockType::from_name(name).unwrap().layout().block_bytes, bytes, "{name}");
        }
        assert_eq!(BlockType::IQ1_S.bits_per_weight(), 1.5625);
        assert_eq!(BlockType::IQ1_M.bits_per_weight(), 1.75);
        assert_eq!(BlockType::TQ1_0.bits_per_weight(), 1.6875);
    }

    #[test]
    fn every_type_has_its_own_entry() {
        for l in LAYOUTS {
            assert_eq!(l.block_type.layout().name, l.name);
            assert_eq!(l.block_type.block_bytes(), l.fields.iter().map(|f| f.1).sum::<usize>());
            assert_eq!(BlockType::from_name(l.name).unwrap(), l.block_type);
        }
    }

    #[test]
    fn field_ranges_tile_the_block() {
        assert_eq!(BlockType::Q4_K.field("d"), 0..2);
        assert_eq!(BlockType::Q4_K.field("qs"), 16..144);
        assert_eq!(BlockType::Q6_K.field("d"), 208..210);
        for l in LAYOUTS {
            let mut end = 0;
            for &(name, size) in l.fields {
                assert_eq!(l.block_type.field(name), end..end + size, "{} {name}", l.name);
                end += size;
            }
            assert_eq!(end, l.block_bytes, "{}", l.name);
        }
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert_eq!(BlockType::from_name("Q9_Z"), Err(CodecError::UnknownType("Q9_Z".into())));
    }
}
