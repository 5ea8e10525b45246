//! PLACEHOLDER: f16 conversions
