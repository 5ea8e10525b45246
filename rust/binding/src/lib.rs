//! `aqrecipe._packer`: the Python face of `aqrecipe-codecs`.
//!
//! Thin by design: numpy buffers in, numpy buffers out. The numeric work runs
//! with the GIL released (`Python::detach`) and its rows spread over rayon's
//! global pool (`RAYON_NUM_THREADS` sets its size). Every [`CodecError`]
//! becomes the exception of the same name in `aqrecipe.errors`; arguments are
//! taken as plain objects and converted inside the function, so a wrong one is
//! a named error too. Each entry runs inside [`guarded`]: a panic (which would
//! be a bug) is raised as `CodecError` naming the call, never unwound into Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use aqrecipe_codecs::{
    dequantize_rows, quantize_rows, quantize_rows_gptq, BlockType, CodecError, EncodeOptions,
    GptqOptions, LAYOUTS,
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
        CodecError::SizeOverflow { .. } => (
            "ShapeMismatchError",
            "the shape is far larger than any real tensor: pass the tensor's own shape (rows, row_len), not a byte count or an unset value".into(),
        ),
        CodecError::GptqOption { .. } => (
            "GptqOptionError",
            "use damp >= 0 (e.g. 0.01), block_size >= 1 (e.g. 128) and a block-quantized type".into(),
        ),
        CodecError::HessianShape { .. } | CodecError::BadHessian { .. } => (
            "HessianError",
            "pass the layer input's X^T X (row_len x row_len, finite, from calibration) for this tensor".into(),
        ),
        CodecError::NotPositiveDefinite { .. } => (
            "HessianError",
            "raise rounding.damp (e.g. 0.05 or 0.1), or calibrate on more text".into(),
        ),
    };
    raise(py, class, msg, Some(hint))
}

/// Run `f` without the GIL; its codec error becomes the named exception. A
/// panic in it unwinds back here (the GIL is re-acquired) into [`guarded`].
fn run_detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, CodecError> + Send,
) -> PyResult<T> {
    py.detach(f).map_err(|e| to_py_err(py, e))
}

/// Run the whole body of a `#[pyfunction]`, argument conversion included, so
/// that no panic (which would be a bug) reaches Python as `PanicException`: it
/// becomes `CodecError` naming the call. `context` describes the arguments
/// (type, shape); it runs only after a panic.
fn guarded<'py, T>(
    py: Python<'py>,
    function: &str,
    context: impl FnOnce() -> String,
    body: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let context = catch_unwind(AssertUnwindSafe(context)).unwrap_or_else(|_| "?".into());
            Err(raise(
                py,
                "CodecError",
                format!("internal codec error in _packer.{function}({context}): {what}"),
                Some(
                    "this is a bug in aqrecipe; please report it with the tensor shape and type"
                        .into(),
                ),
            ))
        }
    }
}

/// `repr(obj)`, cut to a readable length, for error messages.
fn show(obj: &Bound<'_, PyAny>) -> String {
    let text = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".into());
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// `type=..., shape=...` of a call, for the message of a panic.
fn describe(type_name: &Bound<'_, PyAny>, shape_name: &str, shape: String) -> String {
    format!("type={}, {shape_name}={shape}", show(type_name))
}

/// The `.shape` of an array argument, or its repr when it has none.
fn shape_of(x: &Bound<'_, PyAny>) -> String {
    x.getattr("shape")
        .map(|s| show(&s))
        .unwrap_or_else(|_| show(x))
}

/// A wrong argument (not an error the codecs report): the named exception `class`.
fn bad_arg(py: Python<'_>, class: &str, message: String, hint: &str) -> PyErr {
    raise(py, class, message, Some(hint.into()))
}

fn type_name_of(py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<BlockType> {
    let name: String = name.extract().map_err(|_| {
        bad_arg(
            py,
            "UnknownTypeError",
            format!("type name must be a str, got {}", show(name)),
            &format!("use one of: {}", type_names()),
        )
    })?;
    BlockType::from_name(&name).map_err(|e| to_py_err(py, e))
}

/// A shape: a sequence of integers in `0..=usize::MAX` (sizes are checked later).
fn shape_dims(py: Python<'_>, shape: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let hint = "give the decoded tensor's shape as non-negative integers, e.g. (rows, row_len)";
    let not_a_shape = || {
        bad_arg(
            py,
            "ShapeMismatchError",
            format!("shape must be a sequence of integers, got {}", show(shape)),
            hint,
        )
    };
    if shape.is_instance_of::<pyo3::types::PyString>()
        || shape.is_instance_of::<pyo3::types::PyBytes>()
    {
        return Err(not_a_shape());
    }
    let mut dims = Vec::new();
    for (i, item) in shape.try_iter().map_err(|_| not_a_shape())?.enumerate() {
        let item = item.map_err(|_| not_a_shape())?;
        let dim = item.extract::<usize>().map_err(|_| {
            bad_arg(
                py,
                "ShapeMismatchError",
                format!(
                    "shape[{i}] is {} in shape {}; a dimension is an integer from 0 to {}",
                    show(&item),
                    show(shape),
                    usize::MAX
                ),
                hint,
            )
        })?;
        dims.push(dim);
    }
    Ok(dims)
}

/// Quantize the rows of a C-contiguous float32 matrix; returns uint8 `(rows, row_bytes)`.
#[pyfunction]
#[pyo3(signature = (x, type_name, importance=None, ternary_absmean=None))]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    type_name: &Bound<'py, PyAny>,
    importance: Option<&Bound<'py, PyAny>>,
    ternary_absmean: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let context = || describe(type_name, "x.shape", shape_of(x));
    guarded(py, "quantize", context, || {
        let t = type_name_of(py, type_name)?;
        let use_codecs = "use aqrecipe.codecs.quantize, which converts its input";
        let x: PyReadonlyArray2<'py, f32> = x.extract().map_err(|_| {
            bad_arg(
                py,
                "ShapeMismatchError",
                format!("x must be a 2-D float32 array, got {}", shape_of(x)),
                use_codecs,
            )
        })?;
        let (rows, row_len) = (x.shape()[0], x.shape()[1]);
        let rb = aqrecipe_codecs::row_bytes(t, row_len).map_err(|e| to_py_err(py, e))?;
        let n_bytes =
            aqrecipe_codecs::tensor_bytes(t, rows, row_len).map_err(|e| to_py_err(py, e))?;
        let data = x.as_slice().map_err(|_| {
            bad_arg(
                py,
                "ShapeMismatchError",
                "x must be C-contiguous".into(),
                use_codecs,
            )
        })?;
        let imp_array: Option<PyReadonlyArray1<'py, f32>> = match importance {
            Some(a) if !a.is_none() => Some(a.extract().map_err(|_| {
                bad_arg(
                    py,
                    "ImportanceError",
                    format!(
                        "importance must be a 1-D float32 array, got {}",
                        shape_of(a)
                    ),
                    use_codecs,
                )
            })?),
            _ => None,
        };
        let imp = match &imp_array {
            Some(a) => Some(a.as_slice().map_err(|_| {
                bad_arg(
                    py,
                    "ImportanceError",
                    "importance must be contiguous".into(),
                    use_codecs,
                )
            })?),
            None => None,
        };
        let ternary_absmean = match ternary_absmean {
            Some(flag) if !flag.is_none() => flag.extract::<bool>().map_err(|_| {
                bad_arg(
                    py,
                    "CodecError",
                    format!("ternary_absmean must be a bool, got {}", show(flag)),
                    "pass True or False",
                )
            })?,
            _ => false,
        };
        let opts = EncodeOptions { ternary_absmean };
        let out = run_detached(py, || {
            let mut out = vec![0u8; n_bytes];
            quantize_rows(t, data, row_len, imp, &opts, &mut out)?;
            Array2::from_shape_vec((rows, rb), out).map_err(|_| CodecError::SizeOverflow {
                what: format!("the packed shape ({rows}, {rb})"),
            })
        })?;
        Ok(PyArray::from_owned_array(py, out))
    })
}

/// Quantize with error-compensating (GPTQ) rounding against `hessian`
/// (`(row_len, row_len)` float32, the input's XᵀX); returns uint8 `(rows, row_bytes)`.
#[pyfunction]
#[pyo3(signature = (x, type_name, hessian, importance=None, damp=None, block_size=None, act_order=None, ternary_absmean=None))]
#[allow(clippy::too_many_arguments)]
fn quantize_gptq<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    type_name: &Bound<'py, PyAny>,
    hessian: &Bound<'py, PyAny>,
    importance: Option<&Bound<'py, PyAny>>,
    damp: Option<&Bound<'py, PyAny>>,
    block_size: Option<&Bound<'py, PyAny>>,
    act_order: Option<&Bound<'py, PyAny>>,
    ternary_absmean: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let context = || describe(type_name, "x.shape", shape_of(x));
    guarded(py, "quantize_gptq", context, || {
        let t = type_name_of(py, type_name)?;
        let use_face = "use aqrecipe.quant.rounding.quantize_gptq, which converts its input";
        let x: PyReadonlyArray2<'py, f32> = x.extract().map_err(|_| {
            bad_arg(py, "ShapeMismatchError", format!("x must be a 2-D float32 array, got {}", shape_of(x)), use_face)
        })?;
        let (rows, row_len) = (x.shape()[0], x.shape()[1]);
        let rb = aqrecipe_codecs::row_bytes(t, row_len).map_err(|e| to_py_err(py, e))?;
        let n_bytes = aqrecipe_codecs::tensor_bytes(t, rows, row_len).map_err(|e| to_py_err(py, e))?;
        let data = x
            .as_slice()
            .map_err(|_| bad_arg(py, "ShapeMismatchError", "x must be C-contiguous".into(), use_face))?;
        let h: PyReadonlyArray2<'py, f32> = hessian.extract().map_err(|_| {
            bad_arg(py, "HessianError", format!("hessian must be a 2-D float32 array, got {}", shape_of(hessian)), use_face)
        })?;
        if h.shape() != [row_len, row_len] {
            return Err(bad_arg(
                py,
                "HessianError",
                format!("hessian has shape {:?}, expected ({row_len}, {row_len})", h.shape()),
                "pass the X^T X of this tensor's input (one row and column per weight column)",
            ));
        }
        let h = h
            .as_slice()
            .map_err(|_| bad_arg(py, "HessianError", "hessian must be C-contiguous".into(), use_face))?;
        let imp_array: Option<PyReadonlyArray1<'py, f32>> = match importance {
            Some(a) if !a.is_none() => Some(a.extract().map_err(|_| {
                bad_arg(py, "ImportanceError", format!("importance must be a 1-D float32 array, got {}", shape_of(a)), use_face)
            })?),
            _ => None,
        };
        let imp = match &imp_array {
            Some(a) => Some(
                a.as_slice()
                    .map_err(|_| bad_arg(py, "ImportanceError", "importance must be contiguous".into(), use_face))?,
            ),
            None => None,
        };
        let option_hint = "damp is a float >= 0, block_size an int >= 1, act_order a bool";
        let defaults = GptqOptions::default();
        let damp: f64 = match damp.filter(|v| !v.is_none()) {
            Some(v) => v
                .extract()
                .map_err(|_| bad_arg(py, "GptqOptionError", format!("damp must be a number, got {}", show(v)), option_hint))?,
            None => defaults.damp,
        };
        let block_size: usize = match block_size.filter(|v| !v.is_none()) {
            Some(v) => v.extract().map_err(|_| {
                bad_arg(py, "GptqOptionError", format!("block_size must be a positive integer, got {}", show(v)), option_hint)
            })?,
            None => defaults.block_size,
        };
        let act_order: bool = match act_order.filter(|v| !v.is_none()) {
            Some(v) => v
                .extract()
                .map_err(|_| bad_arg(py, "GptqOptionError", format!("act_order must be a bool, got {}", show(v)), option_hint))?,
            None => defaults.act_order,
        };
        let ternary_absmean = match ternary_absmean {
            Some(flag) if !flag.is_none() => flag.extract::<bool>().map_err(|_| {
                bad_arg(py, "CodecError", format!("ternary_absmean must be a bool, got {}", show(flag)), "pass True or False")
            })?,
            _ => false,
        };
        let opts = EncodeOptions { ternary_absmean };
        let gopts = GptqOptions { damp, block_size, act_order };
        let out = run_detached(py, || {
            let mut out = vec![0u8; n_bytes];
            quantize_rows_gptq(t, data, row_len, h, imp, &gopts, &opts, &mut out)?;
            Array2::from_shape_vec((rows, rb), out)
                .map_err(|_| CodecError::SizeOverflow { what: format!("the packed shape ({rows}, {rb})") })
        })?;
        Ok(PyArray::from_owned_array(py, out))
    })
}

/// Dequantize bytes (any shape, C-contiguous uint8) into float32 of `shape`.
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    type_name: &Bound<'py, PyAny>,
    shape: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let context = || describe(type_name, "shape", show(shape));
    guarded(py, "dequantize", context, || {
        let t = type_name_of(py, type_name)?;
        let shape = shape_dims(py, shape)?;
        let Some(&row_len) = shape.last() else {
            return Err(raise(
                py,
                "ShapeMismatchError",
                "shape must have at least one dimension".into(),
                None,
            ));
        };
        let use_codecs = "use aqrecipe.codecs.dequantize, which takes bytes or any array";
        let data: PyReadonlyArrayDyn<'py, u8> = data.extract().map_err(|_| {
            bad_arg(
                py,
                "ShapeMismatchError",
                format!("data must be a uint8 array, got {}", shape_of(data)),
                use_codecs,
            )
        })?;
        let bytes = data.as_slice().map_err(|_| {
            bad_arg(
                py,
                "ShapeMismatchError",
                "data must be C-contiguous".into(),
                use_codecs,
            )
        })?;
        // Every size is checked before the output is allocated: a wrapped product
        // would pass for an empty tensor, a huge one would abort on allocation.
        let n =
            aqrecipe_codecs::decoded_len(t, bytes.len(), &shape).map_err(|e| to_py_err(py, e))?;
        let out = run_detached(py, || {
            let mut out = vec![0f32; n];
            dequantize_rows(t, bytes, row_len, &mut out)?;
            ArrayD::from_shape_vec(IxDyn(&shape), out)
                .map_err(|_| CodecError::ShapeMismatch { len: n, row_len })
        })?;
        Ok(PyArray::from_owned_array(py, out))
    })
}

/// Bytes of one row of `row_len` weights of `type_name`.
#[pyfunction]
fn row_bytes<'py>(
    py: Python<'py>,
    type_name: &Bound<'py, PyAny>,
    row_len: &Bound<'py, PyAny>,
) -> PyResult<usize> {
    let context = || describe(type_name, "row_len", show(row_len));
    guarded(py, "row_bytes", context, || {
        let t = type_name_of(py, type_name)?;
        let n: usize = row_len.extract().map_err(|_| {
            bad_arg(
                py,
                "RowLengthError",
                format!(
                    "row length must be an integer from 0 to {}, got {}",
                    usize::MAX,
                    show(row_len)
                ),
                "give the number of weights in one row (shape[-1])",
            )
        })?;
        aqrecipe_codecs::row_bytes(t, n).map_err(|e| to_py_err(py, e))
    })
}

/// The Rust block layout table, for the cross-check against Python and gguf.
#[pyfunction]
fn layouts(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    guarded(py, "layouts", String::new, || {
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
    })
}

#[pymodule]
fn _packer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_gptq, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(row_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(layouts, m)?)?;
    Ok(())
}
