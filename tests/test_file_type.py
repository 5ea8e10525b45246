"""general.file_type: one table (aqrecipe.quant.blocktypes.FILE_TYPES) for the plan compiler and the GGUF writer.

The compiler's label, the writer's guess and the key read back from the written file must
agree for every file type aqrecipe makes, and each must be llama.h's own ``LLAMA_FTYPE_*``
value (llama-cpp-python mirrors the enum) and what llama.cpp's quantizer writes for it.
A 2-layer random llama with rows of 256 keeps every block type free of fallbacks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from helpers_models import build_sentencepiece

from aqrecipe.output.plan_gguf import write_plan_gguf
from aqrecipe.quant.blocktypes import FILE_TYPES, NEEDS_IMATRIX, TYPE_NAMES, file_type_for
from aqrecipe.errors import UnknownTypeError
from aqrecipe.output.gguf import PlannedTensor, guess_file_type, write_gguf
from aqrecipe.models import ModelSource, open_model
from aqrecipe.output.pack import pack_entry
from aqrecipe.plan import MIXTURES, Plan, PlanSpec, compile_plan

HIDDEN = 256
VOCAB = 512
NO_IMATRIX_MIXTURES = [m for m in MIXTURES if MIXTURES[m].base_type not in NEEDS_IMATRIX]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer llama: F16 safetensors, untied output, a tiny SentencePiece tokenizer of VOCAB pieces."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("ftype_model")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    kv = HIDDEN // 4 * 2
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.up_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, HIDDEN),
        }
    tensors = {
        name: (np.ones(shape) if len(shape) == 1 else rng.normal(0.0, 0.02, shape)).astype(np.float16)
        for name, shape in shapes.items()
    }
    save_file(tensors, str(folder / "model.safetensors"))
    build_sentencepiece(folder, VOCAB)  # llama.cpp's converter writes the vocabulary from it
    return folder


@pytest.fixture(scope="module")
def source(model_dir: Path) -> ModelSource:
    return open_model(model_dir)


class FlatImatrix:
    """Neutral importance (all ones) so the IQ types, which llama.cpp never makes without one, can be packed."""

    def __init__(self, plan: Plan) -> None:
        self.row_len = {e.gguf_name: e.shape[-1] for e in plan.entries}

    def importance(self, name: str) -> np.ndarray:
        return np.ones(self.row_len[name], dtype=np.float32)


def compile_for(source: ModelSource, spec: PlanSpec) -> Plan:
    return compile_plan(source, spec, model_ref=str(source.path))


def file_type_in(path: Path) -> int:
    found = gguf.GGUFReader(str(path)).get_field("general.file_type")
    assert found is not None
    return int(found.contents())


# --- the table ---------------------------------------------------------------------------
def test_table_is_the_mixtures_and_the_block_types() -> None:
    assert set(FILE_TYPES) == set(MIXTURES) | set(TYPE_NAMES)


@pytest.mark.parametrize("name", list(MIXTURES))
def test_a_mixture_is_the_llama_file_type_of_its_name(name: str) -> None:
    assert file_type_for(name) is gguf.LlamaFileType[f"MOSTLY_{name}"]
    assert MIXTURES[name].file_type == int(file_type_for(name))


def test_uniform_k_types_are_the_medium_mixtures() -> None:
    """The old disagreement: the compiler said Q3_K_S / Q4_K_S / Q5_K_S, the writer _M."""
    assert file_type_for("Q3_K") is gguf.LlamaFileType.MOSTLY_Q3_K_M
    assert file_type_for("Q4_K") is gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert file_type_for("Q5_K") is gguf.LlamaFileType.MOSTLY_Q5_K_M
    assert file_type_for("F32") is gguf.LlamaFileType.ALL_F32


def test_unknown_names_fail_loudly() -> None:
    with pytest.raises(UnknownTypeError, match="Q9_K"):
        file_type_for("Q9_K")


# --- compiler and writer agree -----------------------------------------------------------
@pytest.mark.parametrize("block_type", TYPE_NAMES)
def test_uniform_plan_label_equals_writer_guess_and_file(source: ModelSource, block_type: str, tmp_path: Path) -> None:
    plan = compile_for(source, PlanSpec(default=block_type))
    assert {e.type for e in plan.entries if len(e.shape) == 2} == {block_type}
    planned = [PlannedTensor(e.gguf_name, e.hf_name, e.shape, e.type) for e in plan.entries]
    assert guess_file_type(planned) == plan.file_type == int(file_type_for(block_type))
    imatrix = FlatImatrix(plan) if block_type in NEEDS_IMATRIX else None
    entries = {e.gguf_name: e for e in plan.entries}

    def produce(p: PlannedTensor) -> np.ndarray:
        entry = entries[p.gguf_name]
        return pack_entry(source, entry, imatrix.importance(p.gguf_name) if imatrix and entry.type == block_type else None)

    dest = write_gguf(tmp_path / "u.gguf", source, planned, produce)  # no file_type: the writer guesses
    assert file_type_in(dest) == plan.file_type


@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_mixture_file_carries_the_plan_label(source: ModelSource, mixture: str, tmp_path: Path) -> None:
    plan = compile_for(source, PlanSpec(mixture=mixture))
    assert plan.file_type == int(gguf.LlamaFileType[f"MOSTLY_{mixture}"])
    imatrix = FlatImatrix(plan) if plan.needs_imatrix else None
    write_plan_gguf(plan, tmp_path / "m.gguf", imatrix=imatrix)
    assert file_type_in(tmp_path / "m.gguf") == plan.file_type


# --- llama.cpp itself --------------------------------------------------------------------
@pytest.mark.llamacpp
def test_values_are_llama_h_enum() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    medium = {"Q3_K", "Q4_K", "Q5_K"}  # block types that name no file type
    for name, value in FILE_TYPES.items():
        expected = "ALL_F32" if name == "F32" else f"MOSTLY_{name}_M" if name in medium else f"MOSTLY_{name}"
        assert value == getattr(llama_cpp, f"LLAMA_FTYPE_{expected}"), name


@pytest.fixture(scope="module")
def f16_gguf(source: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("ftype_f16") / "f16.gguf"
    write_plan_gguf(compile_for(source, PlanSpec(mixture="F16")), dest)
    return dest


@pytest.mark.llamacpp
@pytest.mark.parametrize("mixture", NO_IMATRIX_MIXTURES)
def test_llama_quantize_writes_the_same_file_type(
    source: ModelSource, f16_gguf: Path, mixture: str, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    from llamacpp_tools import llama_quantize

    theirs = tmp_path / "theirs.gguf"
    llama_quantize(f16_gguf, theirs, mixture)
    ours = tmp_path / "ours.gguf"
    write_plan_gguf(compile_for(source, PlanSpec(mixture=mixture)), ours)
    assert file_type_in(ours) == file_type_in(theirs) == int(file_type_for(mixture))


def minimal_gguf(path: Path, type_name: str, file_type: int | None) -> Path:
    """A one-layer llama header with two matrices of ``type_name`` (zero data) and no vocabulary."""
    layout_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    row_bytes = HIDDEN // layout_bytes[0] * layout_bytes[1]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(HIDDEN)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("none")
    if file_type is not None:
        w.add_file_type(file_type)
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        w.add_tensor(name, np.zeros((HIDDEN, row_bytes), np.uint8), raw_dtype=gguf.GGMLQuantizationType[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_file_type_name(path: Path) -> str:
    """The file type llama.cpp reports loading ``path`` (its ``print_info: file type = ...`` log line)."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    # Our own log sink: llama-cpp-python's drops info lines once any Llama(verbose=False) ran.
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert model, f"llama.cpp could not load {path}"
        llama_cpp.llama_model_free(model)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    found = re.search(r"file type\s*=\s*(.+)", "".join(lines))
    assert found, "llama.cpp logged no file type"
    return found.group(1).strip()


@pytest.mark.llamacpp
@pytest.mark.parametrize("block_type", TYPE_NAMES)
def test_block_type_label_is_llama_cpp_guess(block_type: str, tmp_path: Path) -> None:
    """Without general.file_type llama.cpp guesses from the commonest tensor type: the same answer as ours."""
    pytest.importorskip("llama_cpp")
    guessed = llama_file_type_name(minimal_gguf(tmp_path / "guessed.gguf", block_type, None))
    labelled = llama_file_type_name(minimal_gguf(tmp_path / "labelled.gguf", block_type, int(file_type_for(block_type))))
    assert "guessed" in guessed and "guessed" not in labelled
    assert guessed.replace("(guessed)", "").strip() == labelled
