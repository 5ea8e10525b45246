"""Measure a model: proxy for every (tensor, type), the Fisher estimate of its KLD (measurement type
fisher), measured KLD for a subset or all; resumable.

Work folder layout (``<work_dir>/measure-<key>/``, key = model fingerprint +
imatrix hash + candidates)::

    proxy-rows<n>-<stage>.json  proxies of one decoder layer's tensors (stage "global": token_embd/output),
                                from up to n sampled rows per tensor (``sample_rows``; 0: all)
    fisher-<wkey>-rows<n>-<stage>.json  Fisher estimates of the KLD of that stage's tensors (type fisher)
    kld-<wkey>-<stage>.json     measured KLDs of that stage's tensors (wkey: samples, seq_len, seed)
    measurement-<skey>.json     the finished :class:`Measurement` (skey: all settings), reused by
                                every later budget

Proxies do not depend on the KLD settings, and KLD files grow when more
tensors are asked for, so changing ``calibrate_tensors`` or the samples
reuses everything already measured.

Every file is written atomically when its stage finishes, so a killed run
redoes at most one stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from aqrecipe._testhooks import reached
from aqrecipe.formats.fileio import atomic_write_text
from aqrecipe.plan import is_quantizable
from aqrecipe.planner.config import MeasurementSpec
from aqrecipe.planner.fit import fit_calibration
from aqrecipe.models.tensor_names import layer_of, role_of
from aqrecipe.planner.measurement import (MEASUREMENT_FORMAT, Measurement, TensorMeasurement, TypeOption,
                                          candidate_types, imatrix_hash)
from aqrecipe.quant.sizes import tensor_bytes
from aqrecipe.planner.proxy import can_quantize, proxy_error, round_trip, row_energy, sample_rows

if TYPE_CHECKING:
    from aqrecipe.imatrix.data import ImatrixData
    from aqrecipe.imatrix.protocol import Importance
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.models.source import TensorInfo
    from aqrecipe.planner.kld import KldProbe

log = logging.getLogger(__name__)
MAX_CALIBRATION_TYPES = 5


def measurement_key(fingerprint: str, imx_hash: str, candidates: tuple[str, ...], extra: dict | None = None) -> str:
    """Folder key (model, imatrix, candidates); with ``extra`` the key of a settings-dependent file."""
    blob = json.dumps({"model": fingerprint, "imatrix": imx_hash, "candidates": list(candidates),
                       "extra": extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _evenly(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    idx = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, k)})
    return [items[i] for i in idx]


def kld_subset(tensors: list[TensorMeasurement], n_tensors: int) -> dict[str, list[str]]:
    """Tensors spread over roles and depth (round-robin by role), up to 5 types each spread over bpw."""
    by_role: dict[str, list[TensorMeasurement]] = defaultdict(list)
    for t in sorted(tensors, key=lambda t: (t.role, t.layer if t.layer is not None else -1, t.gguf_name)):
        by_role[t.role].append(t)
    roles = sorted(by_role)
    quota = {r: 0 for r in roles}
    for i in range(min(n_tensors, len(tensors))):
        while True:
            r = roles[i % len(roles)]
            if quota[r] < len(by_role[r]):
                quota[r] += 1
                break
            i += 1
    chosen = [t for r in roles for t in _evenly(by_role[r], quota[r])]
    return {t.gguf_name: [o.type for o in _evenly(list(t.options), MAX_CALIBRATION_TYPES)] for t in chosen}


class _Stage:
    """Reads or computes one checkpoint file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, name: str, compute: Callable[[list[str]], dict], members: list[str]) -> dict:
        """The stage's results for ``members``: those on disk, plus the missing ones computed and saved."""
        path = self.folder / name
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        missing = [m for m in members if m not in data]
        if missing:
            data.update(compute(missing))
            atomic_write_text(path, json.dumps(data, sort_keys=True))
            reached("measure")  # test-only kill point (aqrecipe._testhooks)
        return {m: data[m] for m in members}


def measure(source: WeightSource, imatrix: ImatrixData | None, candidates: tuple[str, ...], spec: MeasurementSpec,
            work_dir: Path | None, *, n_threads: int | None = None) -> Measurement:
    """The :class:`Measurement` of ``source`` (read from ``work_dir`` when already measured)."""
    imx = imatrix_hash(imatrix)
    from aqrecipe.models.files import values_key

    key, wkey, final = _keys(values_key(source), imx, tuple(candidates), spec)  # a fine-tune is not its base
    folder = Path(work_dir) / f"measure-{key}" if work_dir is not None else None
    if folder is not None and (folder / final).exists():
        log.info("reusing measurement %s", folder / final)
        return Measurement.load(folder / final)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    stage = _Stage(folder) if folder is not None else None
    run = _Measuring(source, imatrix, tuple(candidates), spec, n_threads, stage)

    t0 = time.perf_counter()
    proxies = run.proxies()
    fishers = run.fishers(wkey) if run.uses_fisher else {}
    t1 = time.perf_counter()
    wanted = run.kld_wanted(run.tensors(proxies, {}))
    klds = run.klds(wanted, wkey)
    t2 = time.perf_counter()
    m = run.measurement(run.tensors(proxies, klds, fishers), imx)
    m = m.with_calibration(fit_calibration(m))
    log.info("measurement: round trips%s %.1f s (of it the Fisher pass %.1f s), %d KLD probes %.1f s",
             " and Fisher estimates" if run.uses_fisher else "", t1 - t0, run.fisher_seconds,
             sum(len(v) for v in wanted.values()), t2 - t1)
    if folder is not None:
        m.save(folder / final)
    return m


def _keys(fingerprint: str, imx: str, candidates: tuple[str, ...], spec: MeasurementSpec) -> tuple[str, str, str]:
    """The work folder's key, the KLD (and Fisher) files' key and the finished measurement's file name."""
    key = measurement_key(fingerprint, imx, candidates)
    wkey = measurement_key(fingerprint, imx, candidates,
                           {"samples": spec.samples, "seq_len": spec.seq_len, "seed": spec.seed})
    final = f"measurement-{measurement_key(fingerprint, imx, candidates, {**spec.__dict__, 'format': MEASUREMENT_FORMAT})}.json"
    return key, wkey, final


class _Measuring:
    """One measurement run: the tensors by checkpoint stage, their importance, the lazily built KLD probe."""

    def __init__(self, source: WeightSource, imatrix: Importance | None, candidates: tuple[str, ...],
                 spec: MeasurementSpec, n_threads: int | None, stage: _Stage | None) -> None:
        self.source, self.imatrix, self.candidates, self.spec = source, imatrix, candidates, spec
        self.n_threads, self.stage = n_threads, stage
        self.tied = "output.weight" not in {t.gguf_name for t in source.tensors}
        self.infos = [t for t in source.tensors if is_quantizable(t.gguf_name, t.shape)]
        self.fixed = [t for t in source.tensors if not is_quantizable(t.gguf_name, t.shape)]
        self.by_name = {i.gguf_name: i for i in self.infos}
        self.stages: dict[str, list[TensorInfo]] = defaultdict(list)  # "global" or the layer, "0003"
        for info in self.infos:
            layer = layer_of(info.gguf_name)
            self.stages["global" if layer is None else f"{layer:04d}"].append(info)
        self._probe: KldProbe | None = None
        self._sensitivity: dict[str, np.ndarray] | None = None
        self.fisher_seconds = 0.0  # the Fisher pass, model load and reference logits included
        self._fisher_done: dict[str, dict[str, float]] = {}  # Fisher estimates the proxy stage made, not yet saved
        #: measurement type fisher on an HF folder: the Fisher estimate of every swappable tensor
        self.uses_fisher = spec.type == "fisher" and source.hf_folder is not None  # GGUF: see kld_wanted

    def probe(self) -> KldProbe:
        if self._probe is None:
            from aqrecipe.planner.kld import KldProbe, calibration_token_windows

            spec = self.spec
            windows = calibration_token_windows(self.source, spec.samples, spec.seq_len, spec.seed)
            self._probe = KldProbe(self.source, windows, n_threads=self.n_threads)
        return self._probe

    @functools.cached_property
    def swappable(self) -> frozenset[str]:
        """The quantizable tensors a KLD probe (and the Fisher estimate) can set in the torch model."""
        from aqrecipe.planner.kld import probe_can_swap

        return frozenset(i.gguf_name for i in self.infos if probe_can_swap(self.source, i.gguf_name))

    def sensitivity(self) -> dict[str, np.ndarray]:
        """HF name -> per-weight KLD sensitivity of every tensor a probe can swap (computed once)."""
        if self._sensitivity is None:
            from aqrecipe.planner.fisher import kld_sensitivity

            names = [i.hf_name for i in self.infos if i.gguf_name in self.swappable]
            t0 = time.perf_counter()
            self._sensitivity = kld_sensitivity(self.probe(), names, seed=self.spec.seed)
            self.fisher_seconds = time.perf_counter() - t0
        return self._sensitivity

    def fishers(self, wkey: str) -> dict[str, dict[str, float]]:
        """The Fisher estimate of the KLD of every candidate type of every swappable tensor, stage by stage."""
        out: dict[str, dict[str, float]] = {}
        for name in sorted(self.stages):
            members = [i.gguf_name for i in self.stages[name] if i.gguf_name in self.swappable]
            if members:
                out.update(self._checkpointed(f"fisher-{wkey}-rows{self.spec.sample_rows}-{name}.json", self._fisher_stage, members))
        return out

    def _fisher_stage(self, members: list[str]) -> dict:
        """Fisher estimates; those the proxy stage computed from the same round trips are taken as they are."""
        return {n: self._fisher_done.pop(n) if n in self._fisher_done else self._errors(self.by_name[n], True)[1]
                for n in members}

    def _errors(self, info: TensorInfo, with_fisher: bool) -> tuple[dict[str, float], dict[str, float] | None]:
        """The proxy of every candidate type of one tensor and, ``with_fisher``, its Fisher estimate from
        the same round trips (else None). The proxy sums over rows, so the HF row order the Fisher needs
        gives the proxy of llama.cpp's layout."""
        from aqrecipe.planner.fisher import fisher_energy, fisher_kld
        from aqrecipe.planner.kld import hf_weight_of

        if with_fisher:
            hf_name, w = hf_weight_of(self.source, info.gguf_name)
            sens = self.sensitivity()[hf_name].reshape(w.shape)
        else:
            w = self._weight(info)
        imp, weight = self.importance(info.gguf_name), self.error_weight(info.gguf_name)
        energy = row_energy(w, weight)
        sens_energy = fisher_energy(sens, w) if with_fisher else None
        n_groups = len(imp) if imp is not None and np.ndim(imp) == 2 else 1
        sample = sample_rows(energy if sens_energy is None else sens_energy, n_groups, self.spec.sample_rows)
        proxy_rows = fisher_rows = None
        if sample is not None:
            proxy_rows = sample.row_weights(energy)
            if with_fisher:
                fisher_rows = sample.row_weights(sens_energy)
                sens = sens[sample.rows]
            w = w[sample.rows]
        proxies, fishers = {}, {}
        for t in candidate_types(self.candidates, info.shape[-1]):
            if can_quantize(t, imp):
                w_hat = round_trip(w, t, imp)
                proxies[t] = proxy_error(w, w_hat, weight, proxy_rows)
                if with_fisher:
                    fishers[t] = fisher_kld(sens, w, w_hat, fisher_rows)
        return proxies, (fishers if with_fisher else None)

    def importance(self, name: str) -> np.ndarray | None:
        return self.imatrix.importance(name) if self.imatrix is not None else None

    def error_weight(self, name: str) -> np.ndarray | None:
        imp = self.importance(name)
        spec = self.spec
        if (imp is None and name == "token_embd.weight" and self.tied and self.source.hf_folder is not None
                and (spec.probed_tensors > 0 or spec.type != "proxy")):
            return self.probe().output_importance  # a tied token_embd is the output head too
        return imp

    def _checkpointed(self, file: str, compute: Callable[[list[str]], dict], members: list[str]) -> dict:
        return self.stage.get(file, compute, members) if self.stage else compute(members)

    def _weight(self, info: TensorInfo) -> np.ndarray:
        """The tensor as the packer quantizes it (llama.cpp's layout)."""
        return np.asarray(self.source.read_for_gguf(info.gguf_name), dtype=np.float32).reshape(-1, info.shape[-1])

    def proxies(self) -> dict[str, dict[str, float]]:
        """The proxy error of every candidate type of every tensor, stage by stage."""
        proxies: dict[str, dict[str, float]] = {}
        for name in sorted(self.stages):
            log.info("proxy stage %s (%d tensors)", name, len(self.stages[name]))
            members = [i.gguf_name for i in self.stages[name]]
            proxies.update(self._checkpointed(f"proxy-rows{self.spec.sample_rows}-{name}.json", self._proxy_stage, members))
        return proxies

    def _proxy_stage(self, members: list[str]) -> dict:
        out: dict[str, dict[str, float]] = {}
        for n in members:
            out[n], fishers = self._errors(self.by_name[n], self.uses_fisher and n in self.swappable)
            if fishers is not None:  # saved by the Fisher stage of the same layer
                self._fisher_done[n] = fishers
        return out

    def kld_wanted(self, tensors: list[TensorMeasurement]) -> dict[str, list[str]]:
        """The (tensor, types) to measure the KLD of: all of them, or a spread subset.

        None for GGUF input unless the measurement is KLD-only: the probes run the transformers
        model, which only an HF folder has; the proxy then ranks the options uncalibrated.
        """
        if self.source.hf_folder is None and self.spec.type != "kld":
            log.warning("planner: %s is a GGUF file, so the weight-error proxy ranks the types uncalibrated "
                        "(the KLD probes that calibrate it run the Hugging Face model)", self.source.path)
            return {}
        if self.spec.type == "kld":  # every tensor, so refuse before the first probe if one cannot be swapped
            unswappable = [t.gguf_name for t in tensors if t.gguf_name not in self.swappable]
            if unswappable:
                from aqrecipe.errors import UnsupportedArchitectureError

                raise UnsupportedArchitectureError(
                    f"measurement type kld cannot probe {len(unswappable)} tensors that are not one HF weight of "
                    f"their own (merged experts or split tensors: {unswappable[0]} ...)",
                    hint="use measurement type fisher (the default) or proxy: those tensors are ranked by the proxy, "
                         "calibrated on the other tensors' Fisher estimates and KLD probes")
            return {t.gguf_name: [o.type for o in t.options] for t in tensors}
        # merged experts and split tensors have no HF weight of their own: the calibrated proxy ranks them
        return kld_subset([t for t in tensors if t.gguf_name in self.swappable], self.spec.probed_tensors)

    def klds(self, wanted: dict[str, list[str]], wkey: str) -> dict[str, dict[str, float]]:
        """The measured KLD of each wanted (tensor, type), stage by stage."""
        def kld_stage(members: list[str]) -> dict:
            out: dict[str, dict[str, float]] = {}
            from aqrecipe.planner.kld import hf_weight_of

            for gname in members:
                hf_name, w = hf_weight_of(self.source, gname)  # the torch model holds HF tensors
                out[gname] = {t: self.probe().kld(hf_name, round_trip(w, t, self.importance(gname)))
                              for t in wanted[gname]}
                log.info("kld %s: %s", gname, out[gname])
            return out

        klds: dict[str, dict[str, float]] = {}
        for name in sorted(self.stages):
            members = [i.gguf_name for i in self.stages[name] if i.gguf_name in wanted]
            if members:
                klds.update(self._checkpointed(f"kld-{wkey}-{name}.json", kld_stage, members))
        return klds

    def tensors(self, proxies: dict[str, dict[str, float]], klds: dict[str, dict[str, float]],
                fishers: dict[str, dict[str, float]] | None = None) -> list[TensorMeasurement]:
        """One :class:`TensorMeasurement` per quantizable tensor, its options sorted by size."""
        fishers = fishers or {}
        return [
            TensorMeasurement(
                gguf_name=i.gguf_name, hf_name=i.hf_name, role=role_of(i.gguf_name, tied_output=self.tied),
                layer=layer_of(i.gguf_name), shape=tuple(int(d) for d in i.shape),
                n_params=int(np.prod(i.shape)),
                options=tuple(TypeOption(t, tensor_bytes(t, tuple(i.shape)), p, klds.get(i.gguf_name, {}).get(t),
                                         fishers.get(i.gguf_name, {}).get(t))
                              for t, p in sorted(proxies[i.gguf_name].items(),
                                                 key=lambda kv: (tensor_bytes(kv[0], tuple(i.shape)), kv[0]))),
            )
            for i in self.infos
        ]

    def measurement(self, tensors: list[TensorMeasurement], imx: str) -> Measurement:
        return Measurement(
            model_fingerprint=self.source.fingerprint(), imatrix_hash=imx, candidates=self.candidates,
            method=self.spec.type, tensors=tuple(tensors),
            fixed_bytes=sum(4 * int(np.prod(t.shape)) for t in self.fixed),
            fixed_params=sum(int(np.prod(t.shape)) for t in self.fixed),
            settings={**self.spec.__dict__, "tied_output": self.tied},
        )
