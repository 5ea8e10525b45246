//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_q8_0(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q8_0 encoder") }
pub(crate) fn decode_q8_0(_src: &[u8], _dst: &mut [f32]) { todo!("q8_0 decoder") }
pub(crate) fn encode_q4_0(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q4_0 encoder") }
pub(crate) fn decode_q4_0(_src: &[u8], _dst: &mut [f32]) { todo!("q4_0 decoder") }
pub(crate) fn encode_q4_1(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q4_1 encoder") }
pub(crate) fn decode_q4_1(_src: &[u8], _dst: &mut [f32]) { todo!("q4_1 decoder") }
pub(crate) fn encode_q5_0(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q5_0 encoder") }
pub(crate) fn decode_q5_0(_src: &[u8], _dst: &mut [f32]) { todo!("q5_0 decoder") }
pub(crate) fn encode_q5_1(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q5_1 encoder") }
pub(crate) fn decode_q5_1(_src: &[u8], _dst: &mut [f32]) { todo!("q5_1 decoder") }
