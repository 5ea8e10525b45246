//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_q2_k(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q2_k encoder") }
pub(crate) fn decode_q2_k(_src: &[u8], _dst: &mut [f32]) { todo!("q2_k decoder") }
pub(crate) fn encode_q3_k(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q3_k encoder") }
pub(crate) fn decode_q3_k(_src: &[u8], _dst: &mut [f32]) { todo!("q3_k decoder") }
