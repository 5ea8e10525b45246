//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_tq1_0(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("tq1_0 encoder") }
pub(crate) fn decode_tq1_0(_src: &[u8], _dst: &mut [f32]) { todo!("tq1_0 decoder") }
pub(crate) fn encode_tq2_0(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("tq2_0 encoder") }
pub(crate) fn decode_tq2_0(_src: &[u8], _dst: &mut [f32]) { todo!("tq2_0 decoder") }
