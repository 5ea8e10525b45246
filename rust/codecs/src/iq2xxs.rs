//! PLACEHOLDER: to be implemented (owner: see docs/ARCHITECTURE.md).
pub(crate) fn encode_iq2_xxs(_src: &[f32], _importance: Option<&[f32]>, _opts: &crate::EncodeOptions, _dst: &mut [u8]) { todo!("iq2_xxs encoder") }
pub(crate) fn decode_iq2_xxs(_src: &[u8], _dst: &mut [f32]) { todo!("iq2_xxs decoder") }
