//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_iq1_s(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("iq1_s encoder") }
pub(crate) fn decode_iq1_s(_src: &[u8], _dst: &mut [f32]) { todo!("iq1_s decoder") }
pub(crate) fn encode_iq1_m(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("iq1_m encoder") }
pub(crate) fn decode_iq1_m(_src: &[u8], _dst: &mut [f32]) { todo!("iq1_m decoder") }
