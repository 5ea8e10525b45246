//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_f32(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("f32 encoder") }
pub(crate) fn decode_f32(_src: &[u8], _dst: &mut [f32]) { todo!("f32 decoder") }
pub(crate) fn encode_f16(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("f16 encoder") }
pub(crate) fn decode_f16(_src: &[u8], _dst: &mut [f32]) { todo!("f16 decoder") }
pub(crate) fn encode_bf16(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("bf16 encoder") }
pub(crate) fn decode_bf16(_src: &[u8], _dst: &mut [f32]) { todo!("bf16 decoder") }
