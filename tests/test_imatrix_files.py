"""imatrix files: GGUF and legacy .dat round trips, hand-built bytes, malformed input, model checks."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest

from aqrecipe.cli.commands import main
from aqrecipe.errors import ImatrixError
from aqrecipe.imatrix import (
    ImatrixData,
    ImatrixEntry,
    check_against_model,
    convert_imatrix,
    decode_dat,
    encode_dat,
    load_imatrix,
    save_imatrix,
    summarize_imatrix,
)


def _sample(seed: int = 0, *, tokens: int = 8 * 64, experts: bool = True) -> ImatrixData:
    rng = np.random.default_rng(seed)
    entries = {}
    for layer in range(2):
        for name, cols in (("attn_q", 48), ("ffn_down", 80)):
            x = rng.standard_normal((tokens, cols)).astype(np.float64) * rng.uniform(0.1, 5, cols)
            entries[f"blk.{layer}.{name}.weight"] = ImatrixEntry(
                (x * x).sum(0)[None, :], np.array([tokens], np.float32), x.sum(0)[None, :])
    if experts:
        entries["blk.1.ffn_up_exps.weight"] = ImatrixEntry(
            rng.uniform(0, 50, (3, 48)), np.array([128, 0, 64], np.float32))
    return ImatrixData(entries, ["wiki.train.raw"], 8, 64)


# --- GGUF ----------------------------------------------------------------------------
def test_gguf_round_trip_and_layout(tmp_path: Path) -> None:
    data = _sample()
    p = save_imatrix(data, tmp_path / "a.gguf")
    back = load_imatrix(p)
    assert back.equals(data)
    reader = gguf.GGUFReader(str(p))
    assert reader.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in reader.fields
    assert reader.fields["imatrix.datasets"].contents() == ["wiki.train.raw"]
    assert reader.fields["imatrix.chunk_count"].contents() == 8
    assert reader.fields["imatrix.chunk_size"].contents() == 64
    shapes = {t.name: ([int(s) for s in t.shape], t.tensor_type.name) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.in_sum2"] == ([48, 1], "F32")  # ggml ne = [n_cols, n_mat]
    assert shapes["blk.0.attn_q.weight.counts"] == ([1, 1], "F32")
    assert shapes["blk.0.attn_q.weight.in_sum"] == ([48, 1], "F32")
    assert shapes["blk.1.ffn_up_exps.weight.in_sum2"] == ([48, 3], "F32")
    assert shapes["blk.1.ffn_up_exps.weight.counts"] == ([1, 3], "F32")
    names = [t.name for t in reader.tensors]
    assert names[:3] == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",
                         "blk.0.attn_q.weight.in_sum"]  # sorted by weight, llama.cpp's order
    # writing what we read gives the same bytes
    save_imatrix(back, tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_importance_is_mean_square() -> None:
    data = _sample()
    e = data.entries["blk.0.ffn_down.weight"]
    np.testing.assert_allclose(data.importance("blk.0.ffn_down.weight"), e.in_sum2[0] / 512, rtol=1e-6)
    exp = data.importance("blk.1.ffn_up_exps.weight")
    # an expert with no tokens: the mean of the seen experts' rows, each normalised to mean 1
    seen = exp[[0, 2]]
    assert exp.shape == (3, 48)
    np.testing.assert_allclose(exp[1], (seen / seen.mean(axis=1, keepdims=True)).mean(axis=0), rtol=1e-6)
    assert data.importance("blk.9.attn_q.weight") is None


# --- legacy .dat -----------------------------------------------------------------------
def _dat_bytes() -> bytes:
    def entry(name: str, ncall: int, values: list[float]) -> bytes:
        raw = name.encode()
        return (struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
                + struct.pack(f"<{len(values)}f", *values))

    body = entry("blk.0.attn_q.weight", 4, [8.0, 4.0, 0.5]) + entry("output.weight", 2, [1.0, 3.0])
    return struct.pack("<i", 2) + body + struct.pack("<ii", 4, 8) + b"wiki.txt"


def test_hand_built_dat_parses_to_known_values() -> None:
    data = decode_dat(_dat_bytes(), chunk_size=16)
    np.testing.assert_array_equal(data.importance("blk.0.attn_q.weight"), [2.0, 1.0, 0.125])
    np.testing.assert_array_equal(data.importance("output.weight"), [0.5, 1.5])
    q = data.entries["blk.0.attn_q.weight"]
    np.testing.assert_array_equal(q.in_sum2[0], [128.0, 64.0, 8.0])  # values * chunk_size
    np.testing.assert_array_equal(q.counts, [64.0])  # ncall * chunk_size
    assert data.chunk_count == 4 and data.chunk_size == 16 and data.datasets == ["wiki.txt"]
    assert encode_dat(data) == _dat_bytes()


def test_dat_to_gguf_to_dat_is_identical(tmp_path: Path) -> None:
    src = tmp_path / "in.dat"
    src.write_bytes(_dat_bytes())
    convert_imatrix(src, tmp_path / "mid.gguf", chunk_size=512)
    convert_imatrix(tmp_path / "mid.gguf", tmp_path / "out.dat")
    assert (tmp_path / "out.dat").read_bytes() == _dat_bytes()


def test_gguf_to_dat_to_gguf_keeps_values(tmp_path: Path) -> None:
    data = _sample(experts=False)
    save_imatrix(data, tmp_path / "a.gguf")
    convert_imatrix(tmp_path / "a.gguf", tmp_path / "a.dat")
    back = load_imatrix(tmp_path / "a.dat", chunk_size=64)
    assert back.equals(data, with_in_sum=False)  # .dat has no in_sum; everything else is exact
    save_imatrix(back, tmp_path / "b.gguf")
    again = load_imatrix(tmp_path / "b.gguf")
    for name in data.names:
        assert again.entries[name].in_sum2.tobytes() == data.entries[name].in_sum2.tobytes()


@pytest.mark.parametrize("cut", [0, 2, 4, 9, 30, 45, 70])
def test_truncated_dat_is_refused(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "t.dat"
    p.write_bytes(_dat_bytes()[:cut])
    with pytest.raises(ImatrixError) as err:
        load_imatrix(p)
    assert err.value.hint


@pytest.mark.parametrize(
    "patch, what",
    [
        (lambda b: struct.pack("<i", -3) + b[4:], "entry count"),
        (lambda b: b[:4] + struct.pack("<i", 10_000) + b[8:], "name length"),
        (lambda b: b[:4] + struct.pack("<i", 1_000) + b[8:], "beyond the end"),
        (lambda b: b[:31] + struct.pack("<i", -1) + b[35:], "values"),
        (lambda b: b[:35] + struct.pack("<f", float("nan")) + b[39:], "non-finite"),
        (lambda b: b[:35] + struct.pack("<f", float("inf")) + b[39:], "non-finite"),
        (lambda b: b + b"junk", "unexpected bytes"),
    ],
)
def test_malformed_dat_is_refused(patch, what: str) -> None:
    with pytest.raises(ImatrixError, match=what):
        decode_dat(patch(_dat_bytes()))


def test_malformed_gguf_is_refused(tmp_path: Path) -> None:
    save_imatrix(_sample(), tmp_path / "ok.gguf")
    raw = (tmp_path / "ok.gguf").read_bytes()
    last = gguf.GGUFReader(str(tmp_path / "ok.gguf")).tensors[-1]
    for cut in (10, 200, int(last.data_offset) + 2):  # header, tensor infos, tensor data
        (tmp_path / "cut.gguf").write_bytes(raw[:cut])
        with pytest.raises(ImatrixError):
            load_imatrix(tmp_path / "cut.gguf")
    bad = _sample()
    bad.entries["blk.0.attn_q.weight"].in_sum2[0, 3] = np.nan
    save_imatrix(bad, tmp_path / "nan.gguf")
    with pytest.raises(ImatrixError, match="non-finite"):
        load_imatrix(tmp_path / "nan.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ImatrixError, match="not an imatrix"):
        load_imatrix(tmp_path / "model.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ImatrixError, match="empty"):
        load_imatrix(tmp_path / "empty.gguf")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError):
        save_imatrix(ImatrixData(), tmp_path / "x.gguf")
    with pytest.raises(ImatrixError, match="suffix"):
        save_imatrix(_sample(), tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


# --- model checks -------------------------------------------------------------------------
def _fake_model(cols_q: int = 48) -> SimpleNamespace:
    t = lambda gguf_name, shape: SimpleNamespace(gguf_name=gguf_name, shape=shape)  # noqa: E731
    tensors = [t("token_embd.weight", (100, 48))]
    for layer in range(2):
        tensors += [t(f"blk.{layer}.attn_norm.weight", (48,)),
                    t(f"blk.{layer}.attn_q.weight", (48, cols_q)),
                    t(f"blk.{layer}.ffn_down.weight", (48, 80))]
    tensors += [t("output.weight", (100, 48))]
    return SimpleNamespace(tensors=tensors)


def test_check_against_model() -> None:
    data = _sample(experts=False)
    m = check_against_model(data, _fake_model())
    assert not m.partial and len(m.matched) == 4
    with pytest.raises(ImatrixError, match=r"blk.0.attn_q.weight \(48 columns in the imatrix, 64"):
        check_against_model(data, _fake_model(cols_q=64))
    with pytest.raises(ImatrixError, match="no weight for: blk.1.ffn_up_exps.weight"):
        check_against_model(_sample(), _fake_model())
    del data.entries["blk.1.ffn_down.weight"]
    with pytest.raises(ImatrixError, match="covers 3 of 4 weights; missing: blk.1.ffn_down.weight"):
        check_against_model(data, _fake_model())
    m = check_against_model(data, _fake_model(), allow_partial=True)
    assert m.partial and m.missing == ("blk.1.ffn_down.weight",)


# --- show / CLI ---------------------------------------------------------------------------
def test_show_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _sample()
    summary, text = summarize_imatrix(data)
    assert [r["tensor"] for r in summary["tensors"]][:2] == ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]
    assert "blk.1.ffn_up_exps.weight" in text and "48x3" in text
    save_imatrix(data, tmp_path / "a.gguf")
    assert main(["imatrix", "convert", str(tmp_path / "a.gguf"), str(tmp_path / "a.dat")]) == 0
    assert main(["imatrix", "show", str(tmp_path / "a.dat"), "--chunk-size", "64", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"n_entries": 5' in out
    assert main(["imatrix", "show", str(tmp_path / "missing.gguf")]) == 2
