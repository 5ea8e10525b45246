"""Mixture-of-experts layers in the calibration pass: statistics per expert from its routed tokens.

transformers 5 keeps a layer's routed experts as fused 3-D parameters (``mlp.experts.gate_up_proj``
``[n_expert, 2 * ffn, hidden]``, ``mlp.experts.down_proj``) and calls each expert as
``F.linear(x, param[e])``; checkpoints, and llama.cpp's converter, keep one tensor per expert
(``...experts.5.gate_proj.weight``). Here:

- a parameter the checkpoint holds under other names (a fused expert parameter, made of per-expert
  tensors; a renamed router) is loaded by transformers' own conversion mapping (the code
  ``from_pretrained`` runs); reverting that mapping names its checkpoint tensors, which give a fused
  expert parameter's GGUF tensors through the source (``ffn_gate_exps`` + ``ffn_up_exps``);
- each expert's input is captured by a torch-function mode on ``F.linear``: the weight is a view of
  a fused parameter, and its storage offset says which expert it is;
- optionally every expert runs on every token for the statistics only (llm-compressor's
  ``moe_calibrate_all_experts``): the layer's output still follows the router.

Statistics are keyed :func:`~aqrecipe.models.tensor_names.expert_key` (``name#e``). Experts that no
token reached get zero-count statistics, so every expert has its row (the imatrix's count 0). Older
transformers keep experts as ``nn.Linear`` modules: the runner's hooks see those directly and the
key's expert comes from the checkpoint name (:func:`~aqrecipe.models.tensor_names.hf_expert_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, AbstractSet, Any, Sequence

import numpy as np

from aqrecipe.errors import UnsupportedArchitectureError
from aqrecipe.models.tensor_names import expert_key

if TYPE_CHECKING:
    import torch

    from aqrecipe.calibration.hooks import LayerHooks
    from aqrecipe.calibration.observers import InputStatsObserver
    from aqrecipe.models.protocol import WeightSource


@dataclass(frozen=True)
class FusedExperts:
    """One fused 3-D expert parameter of a decoder layer."""

    param: str  # name relative to the layer (``mlp.experts.gate_up_proj``)
    gguf_names: tuple[str, ...]  # the merged GGUF tensors its input feeds
    n_expert: int
    n_in: int  # input features (the linear's in dimension)

    @property
    def owner(self) -> str:
        """The experts module holding the parameter."""
        return self.param.rpartition(".")[0]


def use_eager_experts(model: Any) -> None:
    """Make transformers run experts one by one through ``F.linear`` (not grouped matmuls): the
    capture below needs each expert's own call. A no-op on models without an experts interface."""
    if getattr(model, "_can_set_experts_implementation", lambda: False)():
        model.set_experts_implementation("eager")


@dataclass(frozen=True)
class ConvertedParam:
    """A layer parameter the checkpoint holds under other names (renamed, or split per expert)."""

    param: str  # name relative to the layer
    checkpoint_names: tuple[str, ...]


def converted_params(model: Any, layer: Any, prefix: str, checkpoint: AbstractSet[str]) -> list[ConvertedParam]:
    """The parameters of ``layer`` that the checkpoint (``checkpoint``: its tensor names) does not hold
    under their own name, with the checkpoint tensors transformers' conversion mapping makes them of."""
    found = []
    for name, param in layer.named_parameters():
        if prefix + name in checkpoint:
            continue
        parts = tuple(n for n in _checkpoint_names(model, prefix + name, param) if n in checkpoint)
        if not parts:
            raise UnsupportedArchitectureError(
                f"calibration cannot load {prefix}{name} ({tuple(param.shape)}): neither it nor what "
                "transformers' conversion mapping makes it of is in the checkpoint",
                hint="quantize with an imatrix made by llama-imatrix (--imatrix FILE), or without one")
        found.append(ConvertedParam(name, parts))
    return found


def fused_experts(layer: Any, converted: Sequence[ConvertedParam], source: WeightSource) -> list[FusedExperts]:
    """The converted parameters that are fused routed experts (3-D, feeding merged GGUF expert tensors)."""
    found = []
    for c in converted:
        param = layer.get_parameter(c.param)
        if param.ndim != 3:
            continue
        gguf = tuple(dict.fromkeys(g for part in c.checkpoint_names for g in source.gguf_names_of(part)))
        if not gguf:
            raise UnsupportedArchitectureError(
                f"calibration cannot name {c.param} ({tuple(param.shape)}): llama.cpp's converter writes none "
                "of its checkpoint tensors", hint="quantize with an imatrix made by llama-imatrix (--imatrix FILE)")
        found.append(FusedExperts(c.param, gguf, int(param.shape[0]), int(param.shape[-1])))
    return found


def _checkpoint_names(model: Any, full_name: str, param: torch.Tensor) -> list[str]:
    import torch
    from transformers.core_model_loading import revert_weight_conversion

    return list(revert_weight_conversion(model, {full_name: torch.empty(param.shape, device="meta")}))


def load_converted(model: Any, layer: Any, converted: Sequence[ConvertedParam], read, device: str,
                   dtype: torch.dtype) -> None:
    """Load the converted parameters from their checkpoint tensors (``read(name) -> ndarray``) through
    transformers' own conversion (the code ``from_pretrained`` runs)."""
    import torch
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    state = {n: torch.from_numpy(read(n)) for c in converted for n in c.checkpoint_names}
    config = LoadStateDictConfig(weight_mapping=get_model_conversion_mapping(model), dtype=dtype)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one layer's tensors: its "Loading weights" bar is noise
    try:
        convert_and_load_state_dict_in_model(model, state, config)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    for c in converted:
        owner_name, _, leaf = c.param.rpartition(".")
        owner = layer.get_submodule(owner_name) if owner_name else layer
        value = owner._parameters[leaf]
        if value is None or value.device.type == "meta":
            raise UnsupportedArchitectureError(
                f"transformers did not load {c.param} from {len(c.checkpoint_names)} checkpoint tensors",
                hint="quantize with an imatrix made by llama-imatrix (--imatrix FILE), or without one")
        owner._parameters[leaf] = torch.nn.Parameter(value.detach().to(device=device, dtype=dtype),
                                                     requires_grad=False)


class ExpertCapture:
    """Feeds each routed expert's input (and output) to the layer's hooks under ``name#e``.

    Used as a context manager around one decoder layer's forward; with ``all_experts`` every expert
    also runs on every token of each call (its output discarded) and only those calls are observed.
    """

    def __init__(self, layer: Any, fused: Sequence[FusedExperts], hooks: LayerHooks, *,
                 all_experts: bool = False) -> None:
        self.hooks = hooks
        self._by_storage: dict[int, tuple[Any, FusedExperts]] = {}
        for f in fused:
            param = layer.get_parameter(f.param)
            self._by_storage[param.untyped_storage().data_ptr()] = (param, f)
        self.calls: dict[str, int] = {f.param: 0 for f in fused}
        self._observing = not all_experts
        self._handles = []
        if all_experts:
            for owner in sorted({f.owner for f in fused}):
                self._handles.append(layer.get_submodule(owner).register_forward_pre_hook(
                    self._run_every_expert, with_kwargs=True))
        self._mode = _linear_mode(self._on_linear)

    def __enter__(self) -> "ExpertCapture":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()

    def _on_linear(self, args: tuple, kwargs: dict, out: Any) -> None:
        import torch

        if not self._observing:
            return
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.device.type == "meta":
            return
        hit = self._by_storage.get(weight.untyped_storage().data_ptr())
        if hit is None:
            return
        param, f = hit
        expert = (weight.storage_offset() - param.storage_offset()) // param.stride(0)
        self.calls[f.param] += 1
        x = args[0] if args else kwargs["input"]
        for name in f.gguf_names:
            self.hooks.record(expert_key(name, int(expert)), x, out)

    def _run_every_expert(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Before the routed call: the same experts module on every token for every expert."""
        import torch

        if self._observing:  # this very call is ours
            return None
        if len(args) != 3 or kwargs:
            raise UnsupportedArchitectureError(
                f"{type(module).__name__} is not called as experts(hidden_states, top_k_index, top_k_weights)",
                hint="calibrate without all_experts (the routed tokens only)")
        hidden, index, weights = args
        n_expert = next(f.n_expert for _, f in self._by_storage.values())
        every = torch.arange(n_expert, device=index.device, dtype=index.dtype).expand(hidden.shape[0], n_expert)
        self._observing = True
        try:
            module(hidden, every, torch.ones(every.shape, device=weights.device, dtype=weights.dtype))
        finally:
            self._observing = False
        return None


def _linear_mode(callback):
    """A TorchFunctionMode that calls ``callback(args, kwargs, out)`` after every ``F.linear``."""
    import torch
    from torch.overrides import TorchFunctionMode

    linear = torch.nn.functional.linear

    class _LinearMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func is linear:
                callback(args, kwargs, out)
            return out

    return _LinearMode()


def add_unseen_experts(stats: InputStatsObserver, stage: int, fused: Sequence[FusedExperts]) -> int:
    """Zero-count statistics for every expert no token reached; returns how many (parameter, expert) pairs."""
    unseen = 0
    for f in fused:
        for e in range(f.n_expert):
            missing = [n for n in f.gguf_names if expert_key(n, e) not in stats.stats]
            for name in missing:
                stats.observe(stage, expert_key(name, e), np.zeros((0, f.n_in), dtype=np.float32), None)
            unseen += len(missing) == len(f.gguf_names)
    return unseen


def check_captured(capture: ExpertCapture, prefix: str) -> None:
    """Refuse a layer whose fused experts ran without a captured ``F.linear`` (another implementation)."""
    silent = [p for p, n in capture.calls.items() if n == 0]
    if silent:
        raise UnsupportedArchitectureError(
            f"no per-expert call of {prefix}{silent[0]} was seen: this transformers class does not run its "
            "experts through F.linear on a slice of the fused weight",
            hint="quantize with an imatrix made by llama-imatrix (--imatrix FILE), or without one")
