//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_iq4_nl(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("iq4_nl encoder") }
pub(crate) fn decode_iq4_nl(_src: &[u8], _dst: &mut [f32]) { todo!("iq4_nl decoder") }
