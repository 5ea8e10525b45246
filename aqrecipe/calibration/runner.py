"""Sequential, layer-by-layer calibration forward pass, for any decoder-only transformers model.

The model skeleton holds its parameters on the meta device (no memory) and its buffers for real
(rotary frequencies, embedding scales: the modeling code computes them); then:

1. the decoder's own forward runs with recording stubs in place of its layers
   (:mod:`aqrecipe.calibration.layer_calls`): the embedding of every sample (whatever the family
   does to it, e.g. Gemma's sqrt(hidden) scale) fills the activation cache, and the arguments each
   layer is called with (masks, rotary embeddings, positions; per layer, since Gemma alternates
   sliding and global ones) are kept for the loop. They are recomputed, never checkpointed;
2. for each decoder layer: load that layer's weights (through the source's ``read``), run all
   samples through it in batches with those arguments while hooks on every ``nn.Linear`` feed the
   observers (keyed by the GGUF tensors the linear feeds), write the outputs back to the cache,
   free the layer, checkpoint;
3. apply the final norm (``model.model.norm``) and observe ``output.weight``'s input (the head's
   matmul, and anything after it such as Gemma's logit softcapping, is skipped: only its input
   statistics are needed).

Peak memory is one decoder layer plus the activation cache (which spills to disk above
``max_cache_bytes``). Nothing here knows a model family, so the result equals the model's own
full forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Sequence

import numpy as np

from aqrecipe.calibration.cache import ActivationCache
from aqrecipe.calibration.checkpoint import WorkDir
from aqrecipe.calibration.experts import (ExpertCapture, add_unseen_experts, check_captured, converted_params,
                                          fused_experts, load_converted, use_eager_experts)
from aqrecipe.calibration.heap import trim_heap
from aqrecipe.calibration.hf_model import decoder_of, empty_model, hf_tensor_shapes, linear_modules
from aqrecipe.calibration.hooks import LayerHooks
from aqrecipe.calibration.layer_calls import LayerCall, capture_layer_calls
from aqrecipe.calibration.observers import DownProjRanges, InputStatsObserver, LinearObserver
from aqrecipe.calibration.stats import Backend, ChannelStats
from aqrecipe.errors import AqrecipeError, ImatrixError, ResumeError, UnsupportedArchitectureError
from aqrecipe.models.tensor_names import expert_key, hf_expert_of, split_expert_key
from aqrecipe.optional import require_or_skip, require_torch

if TYPE_CHECKING:
    import torch
    import transformers

    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)

#: What needs torch and transformers here (the DependencyError's message); the helpers below
#: import them plainly because they run only after run_calibration or calibrate checked.
CALIBRATION = "the calibration forward pass (imatrix, SmoothQuant, super-weight detection)"
#: The stage named when a source cannot be calibrated (GGUF input, a decoder without model.layers).
IMATRIX_STAGE = "imatrix calibration"

# Test hooks: SIGKILL ourselves after stage k is committed / in the middle of stage k.
KILL_AFTER_ENV = "AQRECIPE_TEST_KILL_AFTER_STAGE"
KILL_DURING_ENV = "AQRECIPE_TEST_KILL_DURING_STAGE"


@dataclass(frozen=True)
class RunnerOptions:
    """Execution options. Those in :meth:`result_relevant` can change the statistics' bits."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16
    batch_tokens: int = 4096  # samples per batch = max(1, batch_tokens // seq_len)
    max_cache_bytes: int = 2 << 30
    attn_implementation: str = "sdpa"
    include_output: bool = True  # observe output.weight's input (final normed hidden state)
    stats_backend: Backend = "numba"
    collect: bool = True  # False: plain forward pass, no hooks (for overhead measurements)
    all_experts: bool = False  # MoE: statistics of every expert from every token (see calibration.experts)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def result_relevant(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("max_cache_bytes", "stats_backend", "device"):
            d.pop(k)
        if not self.all_experts:  # absent unless set: earlier runs' fingerprints stay valid
            d.pop("all_experts")
        d["device"] = self.resolved_device().split(":")[0]
        return d


@dataclass
class CalibrationResult:
    stats: dict[str, ChannelStats]  # keyed by llama.cpp weight name, in model order
    down_proj_max_in: dict[int, np.ndarray]
    down_proj_max_out: dict[int, np.ndarray]
    n_samples: int
    seq_len: int
    resumed_stages: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    #: seconds spent collecting statistics (hooks + observers) inside ``seconds``
    stats_seconds: float = 0.0
    observers: list[LinearObserver] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return self.n_samples * self.seq_len

    @property
    def stats_overhead(self) -> float:
        """Statistics time relative to the rest of the pass (0.03 = 3% slower than a plain forward)."""
        plain = self.seconds - self.stats_seconds
        return self.stats_seconds / plain if plain > 0 else 0.0


def _torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise AqrecipeError(f"unknown compute dtype {name!r}", hint="use float32, bfloat16 or float16") from None


def build_skeleton(source: WeightSource, attn_implementation: str | None, stage: str = IMATRIX_STAGE):
    """The HF model (parameters on the meta device), its decoder and its config.

    Raises UnsupportedArchitectureError naming ``stage`` for GGUF input (no HF folder) and for a
    model whose decoder has no ``model.embed_tokens`` / ``model.layers``. Routed experts run one by
    one (:func:`~aqrecipe.calibration.experts.use_eager_experts`), so each expert's input is seen.
    """
    model = empty_model(source, stage, attn_implementation=attn_implementation)
    use_eager_experts(model)
    base = decoder_of(model, stage)
    return model, base, model.config


def _load_module(module: torch.nn.Module, source: WeightSource, prefix: str, device: str, dtype,
                 skip: tuple[str, ...] = (), checkpoint: Collection[str] = ()) -> None:
    """Give ``module``'s meta parameters the checkpoint's weights under ``prefix``; move it to ``device``.

    Parameters take the compute dtype; buffers made by the modeling code only move, so rotary
    frequencies keep the precision the model computed them in; a buffer the checkpoint holds (named
    in ``checkpoint``, such as DeepSeek-V3's routing bias ``e_score_correction_bias``) takes the
    checkpoint's values in its own dtype. Parameters under the prefixes in ``skip`` stay on the meta device.
    """
    import torch

    names = [n for n, _ in module.named_parameters() if not n.startswith(skip)]
    state = {n: torch.from_numpy(_finite(source, prefix + n)).to(device=device, dtype=dtype) for n in names}
    module.load_state_dict(state, strict=False, assign=True)
    for sub_name, sub in module.named_modules():
        for key, buf in list(sub._buffers.items()):
            full = f"{prefix}{sub_name}.{key}" if sub_name else f"{prefix}{key}"
            if buf is not None and full in checkpoint:
                sub._buffers[key] = torch.from_numpy(_finite(source, full)).to(device=device, dtype=buf.dtype)
            elif buf is not None and buf.device.type != "meta":
                sub._buffers[key] = buf.to(device)


def _finite(source: WeightSource, hf_name: str) -> np.ndarray:
    """An HF tensor, refused if it holds NaN/Inf: named here, not as the next layer's poisoned input."""
    values = source.read(hf_name)
    if not np.isfinite(values).all():
        from aqrecipe.models.nonfinite import non_finite_error

        raise non_finite_error(source, hf_name)
    return values


def _free(module, skip: tuple[str, ...] = ()) -> None:
    """Drop the module's weights (back to meta); its buffers stay."""
    import torch

    for name, param in list(module.named_parameters()):
        if name.startswith(skip) or param.device.type == "meta":
            continue
        owner, _, leaf = name.rpartition(".")
        holder = module.get_submodule(owner) if owner else module
        holder._parameters[leaf] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _maybe_kill(env: str, stage: int) -> None:
    if os.environ.get(env) == str(stage):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class _Pass:
    """What every stage of one calibration pass reads: the model, the cache, the observers."""

    source: WeightSource
    model: torch.nn.Module  # the HF causal LM (its conversion mapping loads fused expert weights)
    base: torch.nn.Module  # the HF decoder (model.model), on the meta device until a stage loads it
    config: transformers.PretrainedConfig
    cache: ActivationCache
    batches: list[tuple[int, int]]
    observers: list[LinearObserver]
    stats_obs: InputStatsObserver | None
    device: str
    dtype: torch.dtype  # the compute dtype
    options: RunnerOptions
    work: WorkDir | None
    calls: dict[int, list[LayerCall]] = field(default_factory=dict)  # batch size -> each layer's call
    checkpoint_names: frozenset[str] = frozenset()  # the checkpoint's tensor names (HF headers)


def run_calibration(
    source: WeightSource,
    windows: np.ndarray,
    *,
    options: RunnerOptions = RunnerOptions(),
    work: WorkDir | None = None,
    observers: Sequence[LinearObserver] = (),
    quiet: bool = False,
    stage: str = IMATRIX_STAGE,
) -> CalibrationResult:
    """Run ``windows`` ``[samples, seq_len]`` through ``source`` layer by layer.

    ``work`` (an open :class:`WorkDir` with ``n_stages = n_layers + 1``) makes
    the run resumable; without it nothing is written except a spilled cache in
    a temporary folder. ``stage`` names the caller in errors (GGUF input, an unsupported decoder).
    """
    torch, _ = require_torch(CALIBRATION)

    windows = _as_windows(windows)
    n_samples, seq_len = windows.shape
    device = options.resolved_device()
    dtype = _torch_dtype(options.dtype)
    model, base, config = build_skeleton(source, options.attn_implementation, stage)
    n_layers = len(base.layers)
    if work is not None and work.n_stages != n_layers + 1:
        raise ResumeError(f"work folder expects {work.n_stages} stages, the model has {n_layers + 1}")
    stats_obs, ranges_obs, all_obs = _make_observers(options, observers)

    tmp = None if work is not None else tempfile.TemporaryDirectory(prefix="aqrecipe-cache-")
    folder = work.path if work is not None else Path(tmp.name)  # type: ignore[union-attr]
    cache = ActivationCache((n_samples, seq_len, int(config.hidden_size)), max_bytes=options.max_cache_bytes,
                            folder=folder, work=work)
    p = _Pass(source, model, base, config, cache, _batches(n_samples, seq_len, options.batch_tokens),
              all_obs, stats_obs, device, dtype, options, work, checkpoint_names=frozenset(hf_tensor_shapes(source)))
    start_stage = work.completed if work is not None else 0
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            _restore_observers(p, start_stage)
            _capture_calls(p, start_stage, n_layers)
            _fill_cache(p, windows, start_stage)
            stats_seconds = _run_stages(p, start_stage, n_layers, quiet)
    finally:
        cache.close()
        if tmp is not None:
            tmp.cleanup()
    result = _result(p, ranges_obs, observers, start_stage, n_layers, time.perf_counter() - t0, stats_seconds)
    _check_finite(result, options)
    return result


def _result(p: _Pass, ranges_obs: DownProjRanges | None, observers: Sequence[LinearObserver], start_stage: int,
            n_layers: int, seconds: float, stats_seconds: float) -> CalibrationResult:
    n_samples, seq_len, _ = p.cache.shape
    done = n_layers + 1 - start_stage
    return CalibrationResult(
        stats=_ordered_stats(p.stats_obs, p.source),
        down_proj_max_in=dict(sorted(ranges_obs.max_in.items())) if ranges_obs else {},
        down_proj_max_out=dict(sorted(ranges_obs.max_out.items())) if ranges_obs else {},
        n_samples=n_samples,
        seq_len=seq_len,
        resumed_stages=start_stage,
        seconds=seconds,
        tokens_per_second=n_samples * seq_len * done / (n_layers + 1) / max(seconds, 1e-9),
        stats_seconds=stats_seconds,
        observers=list(observers),
    )


def _as_windows(windows: np.ndarray) -> np.ndarray:
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.size == 0:
        raise ValueError(f"windows must be a non-empty [samples, seq_len] array, got {windows.shape}")
    return windows


def _make_observers(options: RunnerOptions, observers: Sequence[LinearObserver]
                    ) -> tuple[InputStatsObserver | None, DownProjRanges | None, list[LinearObserver]]:
    """The built-in observers (input statistics, down_proj ranges) followed by the caller's."""
    stats_obs = InputStatsObserver(options.stats_backend) if options.collect else None
    ranges_obs = DownProjRanges(options.stats_backend, stats_obs) if options.collect else None
    all_obs: list[LinearObserver] = [o for o in (stats_obs, ranges_obs) if o is not None]
    all_obs += list(observers) if options.collect else []
    for obs in observers:
        obs.bind(stats_obs)
    keys = [o.key for o in all_obs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"observer keys must be unique, got {keys}")
    return stats_obs, ranges_obs, all_obs


def _batches(n_samples: int, seq_len: int, batch_tokens: int) -> list[tuple[int, int]]:
    per_batch = max(1, batch_tokens // seq_len)
    return [(s, min(n_samples, s + per_batch)) for s in range(0, n_samples, per_batch)]


def _restore_observers(p: _Pass, start_stage: int) -> None:
    """Finished stages: their observer state comes from the checkpoints."""
    for stage in range(start_stage):
        arrays = p.work.load_stage(stage)  # type: ignore[union-attr]
        for obs in p.observers:
            pre = f"{obs.key}|"
            obs.restore_layer_state(stage, {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)})


def _fill_cache(p: _Pass, windows: np.ndarray, start_stage: int) -> None:
    """The activation cache at ``start_stage``: the embeddings on a fresh run, else the checkpoint."""
    if start_stage == 0:
        _embed(p, windows, p.cache.init_embeddings())
        trim_heap()
        return
    try:
        p.cache.restore(start_stage)
    except FileNotFoundError as exc:
        raise ResumeError(
            f"checkpoint hidden states {exc} are missing or truncated",
            hint="pass restart=True (--restart) to start over",
        ) from None


def _capture_calls(p: _Pass, start_stage: int, n_layers: int) -> None:
    """Each layer's call arguments, for every batch size of the run (masks have a batch dimension).

    They depend on shapes, dtype and device only, so the decoder's preamble runs on zero
    embeddings: no weight is loaded, and a resumed run recomputes them as cheaply.
    """
    import torch

    if start_stage >= n_layers:
        return
    _, seq_len, hidden = p.cache.shape
    for size in sorted({s1 - s0 for s0, s1 in p.batches}):
        probe = torch.zeros(size, seq_len, hidden, device=p.device, dtype=p.dtype)
        _load_module(p.base, p.source, "model.", p.device, p.dtype, skip=_DECODER_WEIGHTS)
        _, p.calls[size] = capture_layer_calls(p.base, inputs_embeds=probe)


#: What the call-capturing preamble never needs: the layers' and the embedding's weights.
_DECODER_WEIGHTS = ("layers.", "embed_tokens.", "norm.")


def _run_stages(p: _Pass, start_stage: int, n_layers: int, quiet: bool) -> float:
    """Every stage from ``start_stage`` on (decoder layers, then the output); returns the statistics seconds."""
    n_samples, seq_len, _ = p.cache.shape
    stages = range(start_stage, n_layers + 1)
    bar = _progress(len(stages), n_layers + 1, start_stage, quiet)
    stats_seconds = 0.0
    for stage in stages:
        ts = time.perf_counter()
        if stage < n_layers:
            stats_seconds += _run_layer(stage, p)
        else:
            stats_seconds += _run_output(stage, p)
        # the stage's weights and activations are dead now: without handing the freed
        # heap back, glibc kept it and RSS crept up by tens of MB per layer
        trim_heap()
        if p.work is not None:
            _checkpoint(p, p.work, stage, n_layers)
        if bar is not None:
            bar.set_postfix(tok_s=f"{n_samples * seq_len / (time.perf_counter() - ts):,.0f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return stats_seconds


def _checkpoint(p: _Pass, work: WorkDir, stage: int, n_layers: int) -> None:
    """Save the stage's observer state and the next stage's input, then commit the stage."""
    arrays = {}
    for obs in p.observers:
        arrays.update({f"{obs.key}|{k}": v for k, v in obs.layer_state(stage).items()})
    if stage < n_layers:
        p.cache.persist(stage + 1)
    work.save_stage(stage, arrays)
    work.commit(stage + 1)
    _maybe_kill(KILL_AFTER_ENV, stage)


def _progress(total: int, n_stages: int, initial: int, quiet: bool):
    if quiet:
        return None
    tqdm = require_or_skip("tqdm.auto", "the calibration progress bar")
    if tqdm is None:
        return None
    return tqdm.tqdm(total=n_stages, initial=initial, desc="calibrating", unit="layer", leave=False)


def _embed(p: _Pass, windows: np.ndarray, out: np.ndarray) -> None:
    """Layer 0's input for every sample, from the decoder's own forward (its embedding and scaling)."""
    import torch

    _load_module(p.base, p.source, "model.", p.device, p.dtype, skip=("layers.",))
    try:
        for s0, s1 in p.batches:
            ids = torch.from_numpy(windows[s0:s1]).to(p.device)
            hidden, _ = capture_layer_calls(p.base, input_ids=ids)
            out[s0:s1] = hidden.float().cpu().numpy()
    finally:
        _free(p.base, skip=("layers.",))


def _linears(module, prefix: str, source: WeightSource) -> list[tuple[tuple[str, ...], Any]]:
    """Each ``nn.Linear`` of a layer with the GGUF tensors its weight feeds (none: not observed).

    A fused HF linear feeds one fused GGUF tensor (phi3's qkv_proj -> attn_qkv); a linear the
    converter splits feeds several, which share its input statistics. An expert's linear feeds its
    slice of a merged-expert tensor (``name#e``).
    """
    found = []
    for sub, mod in linear_modules(module):
        hf_name = f"{prefix}{sub}.weight"
        # a GGUF tensor whose rows are not this linear's input (MLA's attn_k_b, split from kv_b_proj
        # and transposed per head) reads something else in llama.cpp: not observed here
        names = tuple(n for n in source.gguf_names_of(hf_name) if source.tensor(n).shape[-1] == mod.in_features)
        expert = hf_expert_of(hf_name)
        if expert is not None:  # an expert kept as its own nn.Linear (transformers 4): its own statistics
            names = tuple(expert_key(n, expert) if n.endswith("_exps.weight") else n for n in names)
        if names:
            found.append((names, mod))
    return found


def _run_layer(stage: int, p: _Pass) -> float:
    """Run one decoder layer over the cache; returns the seconds spent in statistics."""
    import torch

    layer = p.base.layers[stage]
    prefix = f"model.layers.{stage}."
    converted = converted_params(p.model, layer, prefix, p.checkpoint_names)
    fused = fused_experts(layer, converted, p.source)
    _load_module(layer, p.source, prefix, p.device, p.dtype, skip=tuple(c.param for c in converted),
                 checkpoint=p.checkpoint_names)
    if converted:
        load_converted(p.model, layer, converted, lambda name: _finite(p.source, name), p.device, p.dtype)
    hooks = (LayerHooks(stage, _linears(layer, prefix, p.source), p.observers, p.stats_obs)
             if p.options.collect else None)
    capture = (ExpertCapture(layer, fused, hooks, all_experts=p.options.all_experts)
               if fused and hooks is not None else contextlib.nullcontext())
    src, dst = p.cache.source(stage), p.cache.target(stage)
    try:
        with capture:
            _run_batches(stage, p, layer, hooks, src, dst)
        if isinstance(capture, ExpertCapture):
            check_captured(capture, prefix)
            if p.stats_obs is not None:
                unseen = add_unseen_experts(p.stats_obs, stage, fused)
                if unseen:
                    log.info("layer %d: %d expert slices received no calibration token", stage, unseen)
    finally:
        if hooks is not None:
            hooks.remove()
        _free(layer)
    return hooks.seconds if hooks is not None else 0.0


def _run_batches(stage: int, p: _Pass, layer, hooks: LayerHooks | None, src, dst) -> None:
    """Every batch of the cache through ``layer``, outputs into ``dst``."""
    import torch

    for i, (s0, s1) in enumerate(p.batches):
        h = torch.from_numpy(np.ascontiguousarray(src[s0:s1])).to(device=p.device, dtype=p.dtype)
        call = p.calls[s1 - s0][stage]
        if hooks is not None:
            hooks.next_batch()
        out = layer(h, *call.args, **call.kwargs)
        if isinstance(out, tuple):  # older transformers: (hidden_states, ...)
            out = out[0]
        dst[s0:s1] = out.float().cpu().numpy()
        if i == 0:
            _maybe_kill(KILL_DURING_ENV, stage)


def _run_output(stage: int, p: _Pass) -> float:
    """Statistics of the output projection's input; returns the seconds they took."""
    import torch

    from aqrecipe.calibration.hooks import as_numpy

    collect = p.options.collect and p.options.include_output
    out_names = tuple(p.source.gguf_names_of("lm_head.weight")) if collect else ()  # tied: no output.weight
    finals = [o for o in p.observers if o.wants_final] if p.options.collect else []
    if not out_names and not finals:
        return 0.0
    norm = getattr(p.base, "norm", None)
    if norm is None:
        raise UnsupportedArchitectureError(
            f"{type(p.base).__name__} has no final norm (model.norm): the output head's input cannot be observed",
            hint="calibrate without the output head (include_output=False)")
    _load_module(norm, p.source, "model.norm.", p.device, p.dtype)
    hooks = LayerHooks(stage, [], p.observers, p.stats_obs)
    src = p.cache.source(stage)
    try:
        for s0, s1 in p.batches:
            h = torch.from_numpy(np.ascontiguousarray(src[s0:s1])).to(device=p.device, dtype=p.dtype)
            hooks.next_batch()
            normed = norm(h)
            for name in out_names:
                hooks.record(name, normed, None)
            if finals:
                x = as_numpy(normed)
                for obs in finals:
                    obs.observe_final(x)
    finally:
        _free(norm)
    return hooks.seconds


def _ordered_stats(stats_obs: InputStatsObserver | None, source: WeightSource) -> dict[str, ChannelStats]:
    """The statistics in the model's tensor order; a merged-expert tensor's keys by expert."""
    if stats_obs is None:
        return {}
    by_tensor: dict[str, list[tuple[int, str]]] = {}
    for key in stats_obs.stats:
        name, expert = split_expert_key(key)
        by_tensor.setdefault(name, []).append((-1 if expert is None else expert, key))
    return {key: stats_obs.stats[key] for t in source.tensors for _, key in sorted(by_tensor.get(t.gguf_name, ()))}


def _check_finite(result: CalibrationResult, options: RunnerOptions) -> None:
    bad = [n for n, st in result.stats.items() if not st.is_finite()]
    if bad:
        raise ImatrixError(
            f"non-finite activations in {len(bad)} linears (first: {bad[0]})",
            hint="run calibration in float32 (dtype float32); the model may overflow in "
            f"{options.dtype}" if options.dtype != "float32" else
            "the model's weights or the calibration text produce inf/NaN activations",
        )
