//! `aqrecipe._packer`: the Python face of `aqrecipe-codecs`.
//!
//! Thin by design: numpy buffers in, numpy buffers out. The numeric work runs
//! with the GIL released (`Python::detach`) and its rows spread over rayon's
//! global pool (`RAYON_NUM_THREADS` sets its size). Every [`CodecError`]
//! becomes the exception of the same name in `aqrecipe.errors`, and a panic
//! (which would be a bug) is caught and raised as `CodecError`, never
//! unwound into Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use aqrecipe_codecs::{
    dequantize_rows, quantize_rows, BlockType, CodecError, EncodeOptions, LAYOUTS,
};
use numpy::ndarray::{Array2, ArrayD, IxDyn};
use numpy::{
    PyArray, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Build the named exception of `aqrecipe.errors` with a message and a hint.
fn raise(py: Python<'_>, class: &str, message: String, hint: Option<String>) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("aqrecipe.errors")?.getattr(class)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("hint", hint.clone())?;
        let exc = cls.call((message.clone(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    // If aqrecipe.errors itself cannot be imported, still report the problem.
    build().unwrap_or_else(|e| e)
}

fn type_names() -> String {
    LAYOUTS
        .iter()
        .map(|l| l.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Map a codec error to its Python exception class, message and hint.
fn to_py_err(py: Python<'_>, err: CodecError) -> PyErr {
    let msg = err.to_string();
    let (class, hint) = match &err {
        CodecError::UnknownType(_) => ("UnknownTypeError", format!("use one of: {}", type_names())),
        CodecError::RowLength { .. } => (
            "RowLengthError",
            "pick a type whose block size divides the row length (aqrecipe.blocktypes.fallback_for)".into(),
        ),
        CodecError::ShapeMismatch { .. } => ("ShapeMismatchError", "pass whole rows: shape[-1] is the row length".into()),
        CodecError::ByteLength { .. } => (
            "ByteLengthError",
            "the bytes must be exactly rows * row_bytes(type, row_len); check the type and shape".into(),
        ),
        CodecError::ImportanceLength { .. } | CodecError::BadImportance { .. } => (
            "ImportanceError",
            "importance needs one finite, non-negative weight per column (an imatrix row)".into(),
        ),
        CodecError::NonFinite { .. } => (
            "NonFiniteWeightError",
            "the tensor holds NaN or Inf; fix the checkpoint or the transform that produced it".into(),
        ),
        CodecError::OutOfRange { .. } => (
            "CodecError",
            "store this tensor as BF16 or F32 (a recipe rule `type: BF16`), whose range holds it".into(),
        ),
    };
    raise(py, class, msg, Some(hint))
}

/// Run `f` without the GIL; a panic becomes `Err(message)`.
fn run_detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, CodecError> + Send,
) -> PyResult<T> {
    let outcome = py.detach(move || catch_unwind(AssertUnwindSafe(f)));
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py_err(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(raise(
                py,
                "CodecError",
                format!("internal codec error: {what}"),
                Some(
                    "this is a bug in aqrecipe; please report it with the tensor shape and type"
                        .into(),
                ),
            ))
        }
    }
}

fn block_type(py: Python<'_>, name: &str) -> PyResult<BlockType> {
    BlockType::from_name(name).map_err(|e| to_py_err(py, e))
}

/// Quantize the rows of a C-contiguous float32 matrix; returns uint8 `(rows, row_bytes)`.
#[pyfunction]
#[pyo3(signature = (x, type_name, importance=None, ternary_absmean=false))]
fn quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    type_name: &str,
    importance: Option<PyReadonlyArray1<'py, f32>>,
    ternary_absmean: bool,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let t = block_type(py, type_name)?;
    let (rows, row_len) = (x.shape()[0], x.shape()[1]);
    let rb = aqrecipe_codecs::row_bytes(t, row_len).map_err(|e| to_py_err(py, e))?;
    let data = x.as_slice().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(
            "x must be C-contiguous (use aqrecipe.codecs.quantize)",
        )
    })?;
    let imp = match &importance {
        Some(a) => Some(a.as_slice().map_err(|_| {
            pyo3::exceptions::PyValueError::new_err("importance must be contiguous")
        })?),
        None => None,
    };
    let opts = EncodeOptions { ternary_absmean };
    let out = run_detached(py, || {
        let mut out = vec![0u8; rows * rb];
        quantize_rows(t, data, row_len, imp, &opts, &mut out)?;
        Ok(out)
    })?;
    let arr = Array2::from_shape_vec((rows, rb), out).expect("rows * row_bytes elements");
    Ok(PyArray::from_owned_array(py, arr))
}

/// Dequantize bytes (any shape, C-contiguous uint8) into float32 of `shape`.
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    data: PyReadonlyArrayDyn<'py, u8>,
    type_name: &str,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let t = block_type(py, type_name)?;
    let Some(&row_len) = shape.last() else {
        return Err(raise(
            py,
            "ShapeMismatchError",
            "shape must have at least one dimension".into(),
            None,
        ));
    };
    let bytes = data.as_slice().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(
            "data must be C-contiguous (use aqrecipe.codecs.dequantize)",
        )
    })?;
    let n: usize = shape.iter().product();
    let out = run_detached(py, || {
        let mut out = vec![0f32; n];
        dequantize_rows(t, bytes, row_len, &mut out)?;
        Ok(out)
    })?;
    let arr = ArrayD::from_shape_vec(IxDyn(&shape), out).expect("product of shape elements");
    Ok(PyArray::from_owned_array(py, arr))
}

/// Bytes of one row of `row_len` weights of `type_name`.
#[pyfunction]
fn row_bytes(py: Python<'_>, type_name: &str, row_len: usize) -> PyResult<usize> {
    let t = block_type(py, type_name)?;
    aqrecipe_codecs::row_bytes(t, row_len).map_err(|e| to_py_err(py, e))
}

/// The Rust block layout table, for the cross-check against Python and gguf.
#[pyfunction]
fn layouts(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for l in LAYOUTS {
        let d = PyDict::new(py);
        d.set_item("name", l.name)?;
        d.set_item("ggml_type_id", l.ggml_type_id)?;
        d.set_item("block_weights", l.block_weights)?;
        d.set_item("block_bytes", l.block_bytes)?;
        d.set_item("fields", l.fields.to_vec())?;
        list.append(d)?;
    }
    Ok(list)
}

#[pymodule]
fn _packer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(row_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(layouts, m)?)?;
    Ok(())
}
