"""What aqrecipe reads, in one table: the model families tested end to end and the input forms.

Any architecture llama.cpp's converter knows is read (``aqrecipe inspect --supported`` lists
them); the families below are the ones ``tests/test_families.py`` runs through every stage with
a tiny model built from the family's real config. The README's table is generated from here
(``python -m aqrecipe.models.support``), and a test keeps the two equal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A model family tested end to end: its name, HF class, config ``model_type`` and what it exercises."""

    name: str
    hf_architecture: str
    model_type: str
    gguf_arch: str
    features: str


TESTED_FAMILIES: tuple[Family, ...] = (
    Family("llama3", "LlamaForCausalLM", "llama", "llama", "Llama 3.x `llama3` rope scaling, GQA, q/k permutation"),
    Family("mistral", "MistralForCausalLM", "mistral", "llama", "sliding window, SentencePiece tokenizer"),
    Family("qwen2", "Qwen2ForCausalLM", "qwen2", "qwen2", "attention biases, tied embeddings"),
    Family("qwen3", "Qwen3ForCausalLM", "qwen3", "qwen3", "QK-norm, head_dim != hidden / heads"),
    Family("gemma2", "Gemma2ForCausalLM", "gemma2", "gemma2",
           "local/global attention, logit and attention softcapping, (1 + w) norms"),
    Family("gemma3", "Gemma3ForCausalLM", "gemma3_text", "gemma3", "QK-norm, local/global rope, (1 + w) norms"),
    Family("phi3", "Phi3ForCausalLM", "phi3", "phi3", "fused qkv and gate/up projections"),
)

#: (input form, what works from it)
INPUT_FORMS: tuple[tuple[str, str], ...] = (
    ("Hugging Face folder (safetensors F32/F16/BF16)",
     "everything: mixtures, rules, planner, computed imatrix, super weights, SmoothQuant, GGUF / safetensors / "
     "compressed-tensors output, evaluation"),
    ("GGUF file (F32/F16/BF16, split files too)",
     "mixtures, rules, planner proxy, imatrix files (e.g. llama-imatrix's), GGUF output, evaluation; "
     "quantized GGUF only with `--allow-requantize`; the torch stages (computed imatrix, super weights, "
     "SmoothQuant, the planner's Fisher estimate and KLD probes) need the HF folder"),
)


def supported_markdown() -> str:
    """The README's families and input-forms tables."""
    lines = ["| family | HF class | `model_type` | llama.cpp arch | what it exercises |", "|---|---|---|---|---|"]
    lines += [f"| {f.name} | `{f.hf_architecture}` | `{f.model_type}` | `{f.gguf_arch}` | {f.features} |"
              for f in TESTED_FAMILIES]
    lines += ["", "| input | what works from it |", "|---|---|"]
    lines += [f"| {form} | {what} |" for form, what in INPUT_FORMS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(supported_markdown())
