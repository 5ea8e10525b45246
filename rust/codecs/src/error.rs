//! Codec errors. The binding maps each variant to a named Python exception.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum CodecError {
    /// The type name is not one of [`crate::LAYOUTS`].
    UnknownType(String),
    /// The row length is zero or not a multiple of the block size.
    RowLength { type_name: &'static str, row_len: usize, block_weights: usize },
    /// The flat buffer does not hold a whole number of rows.
    ShapeMismatch { len: usize, row_len: usize },
    /// The byte buffer has the wrong length for the given shape.
    ByteLength { expected: usize, got: usize },
    /// The importance vector does not have one entry per column.
    ImportanceLength { expected: usize, got: usize },
    /// An importance weight is negative, NaN or infinite.
    BadImportance { col: usize, value: f32 },
    /// A weight is NaN or infinite (first one in row-major order).
    NonFinite { row: usize, col: usize, value: f32 },
    /// A finite weight beyond what a float storage type holds (F16 above
    /// ±65504, BF16 within half an ulp of f32::MAX): it would be stored as ±inf.
    OutOfRange { type_name: &'static str, row: usize, col: usize, value: f32, max: f32 },
    /// A size computed from the caller's shape (element count, byte count)
    /// exceeds `isize::MAX`, the most any array can hold: the shape is not real.
    SizeOverflow { what: String },
    /// A GPTQ option is out of range, or the type is not block-quantized.
    GptqOption { what: String },
    /// The Hessian does not hold `row_len × row_len` values.
    HessianShape { row_len: usize, got: usize },
    /// The Hessian holds a non-finite value or a negative diagonal entry.
    BadHessian { what: String },
    /// The damped Hessian is not positive definite (Cholesky pivot at `col`).
    NotPositiveDefinite { col: usize, damp: f64 },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::UnknownType(name) => write!(f, "unknown block type '{name}'"),
            CodecError::RowLength { type_name, row_len, block_weights } => write!(
                f,
                "row length {row_len} is not a positive multiple of the {type_name} block size {block_weights}"
            ),
            CodecError::ShapeMismatch { len, row_len } => {
                write!(f, "{len} values do not form whole rows of {row_len}")
            }
            CodecError::ByteLength { expected, got } => {
                write!(f, "expected {expected} bytes for this shape, got {got}")
            }
            CodecError::ImportanceLength { expected, got } => {
                write!(f, "importance has {got} entries, expected one per column ({expected})")
            }
            CodecError::BadImportance { col, value } => {
                write!(f, "importance weight at column {col} is {value}; weights must be finite and >= 0")
            }
            CodecError::NonFinite { row, col, value } => {
                write!(f, "non-finite weight {value} at row {row}, column {col}")
            }
            CodecError::OutOfRange { type_name, row, col, value, max } => write!(
                f,
                "weight {value:e} at row {row}, column {col} is outside the {type_name} range (±{max:e}); it would be stored as infinity"
            ),
            CodecError::SizeOverflow { what } => write!(
                f,
                "{what} exceeds {}, the largest size an array can have",
                isize::MAX
            ),
            CodecError::GptqOption { what } => write!(f, "GPTQ rounding: {what}"),
            CodecError::HessianShape { row_len, got } => write!(
                f,
                "the Hessian has {got} values, expected {row_len} x {row_len} (one row and column per input column)"
            ),
            CodecError::BadHessian { what } => write!(f, "the Hessian is not a valid X X^T: {what}"),
            CodecError::NotPositiveDefinite { col, damp } => write!(
                f,
                "the Hessian with damp {damp} is not positive definite (pivot at column {col})"
            ),
        }
    }
}

impl std::error::Error for CodecError {}
