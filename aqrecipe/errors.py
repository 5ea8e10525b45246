"""The one error hierarchy of aqrecipe.

Every error a user can cause is an :class:`AqrecipeError`: it carries a stable
``code`` and a ``hint`` that says how to fix it. The CLI prints these without
a traceback and exits with :data:`EXIT_USER_ERROR`. Errors from the Rust codecs
arrive as the :class:`CodecError` subclasses below (the binding raises them by
name).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the run finished but a check failed (e.g. strict coherence)
EXIT_USER_ERROR = 2  # bad input: recipe, model, data, paths


class AqrecipeError(Exception):
    """Base class. ``code`` is stable and documented in docs/errors.md."""

    code = "AQ000"
    exit_code = EXIT_USER_ERROR  # what the CLI exits with when this error ends a command

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


# --- recipes and plans -------------------------------------------------------
class RecipeError(AqrecipeError):
    """A recipe failed validation; ``issues`` lists every problem found."""

    code = "AQ100"

    def __init__(self, message: str, issues: list | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.issues = list(issues or [])


class PlanError(AqrecipeError):
    """A plan cannot be built or read (e.g. a type does not fit, a stale plan file)."""

    code = "AQ200"


class InfeasibleBudgetError(PlanError):
    """No assignment meets both the size budget and the quality cap."""

    code = "AQ210"


# --- models and files --------------------------------------------------------
class ModelError(AqrecipeError):
    """A model folder or file is missing, malformed or unsupported."""

    code = "AQ300"


class UnsupportedArchitectureError(ModelError):
    code = "AQ310"


class UnsupportedDtypeError(ModelError):
    code = "AQ320"


class CorruptFileError(ModelError):
    """A file's bytes contradict its own header (truncated, bad offsets, bad magic)."""

    code = "AQ330"


class GGUFFormatError(CorruptFileError):
    code = "AQ340"


class ImatrixError(AqrecipeError):
    """An importance matrix is malformed or does not match the model."""

    code = "AQ400"


class CalibrationDataError(AqrecipeError):
    """Calibration or evaluation text is missing, empty, binary or too short."""

    code = "AQ500"


class ResumeError(AqrecipeError):
    """A work folder's checkpoints belong to another run (fingerprint changed) or are locked."""

    code = "AQ600"


class OutputError(AqrecipeError):
    """The output path cannot be written (missing folder, read-only, disk full)."""

    code = "AQ700"


class MemoryLimitError(AqrecipeError):
    """``--max-memory`` is malformed or too small for the model's largest layer."""

    code = "AQ750"


class EvalError(AqrecipeError):
    """Evaluation could not run (missing backend, model does not load)."""

    code = "AQ800"


class ConsumerCrashError(EvalError):
    """llama.cpp (or another library we call in a child process) died: a signal or an abort.

    Not the user's mistake, so the CLI exits with :data:`EXIT_FAILURE`; what the run
    wrote before stays in place.
    """

    code = "AQ810"
    exit_code = EXIT_FAILURE


class DependencyError(AqrecipeError):
    """An optional dependency needed for this command is not installed."""

    code = "AQ900"


# --- codecs (raised by the Rust extension) -----------------------------------
class CodecError(AqrecipeError):
    """Base class of the errors raised by ``aqrecipe._packer``."""

    code = "AQ1000"


class UnknownTypeError(CodecError):
    code = "AQ1001"


class RowLengthError(CodecError):
    code = "AQ1002"


class ShapeMismatchError(CodecError):
    code = "AQ1003"


class ByteLengthError(CodecError):
    code = "AQ1004"


class ImportanceError(CodecError):
    code = "AQ1005"


class NonFiniteWeightError(CodecError):
    code = "AQ1006"


class GptqOptionError(CodecError):
    """A GPTQ rounding option is out of range, or the type is not block-quantized."""

    code = "AQ1007"


class HessianError(CodecError):
    """A GPTQ Hessian (the input's XᵀX) has the wrong shape, is not finite, or is not positive definite."""

    code = "AQ1008"
