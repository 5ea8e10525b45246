//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_q4_k(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q4_k encoder") }
pub(crate) fn decode_q4_k(_src: &[u8], _dst: &mut [f32]) { todo!("q4_k decoder") }
pub(crate) fn encode_q5_k(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q5_k encoder") }
pub(crate) fn decode_q5_k(_src: &[u8], _dst: &mut [f32]) { todo!("q5_k decoder") }
pub(crate) fn encode_q6_k(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("q6_k encoder") }
pub(crate) fn decode_q6_k(_src: &[u8], _dst: &mut [f32]) { todo!("q6_k decoder") }
