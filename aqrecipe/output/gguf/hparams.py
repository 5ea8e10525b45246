"""Architecture hyperparameters as llama.cpp's ``<arch>.*`` keys."""

from __future__ import annotations

import gguf

from aqrecipe.models.architectures import ArchInfo


def add_hparams(writer: gguf.GGUFWriter, arch: ArchInfo) -> None:
    """Write the keys llama.cpp reads to build the graph of ``arch``."""
    writer.add_context_length(arch.context_length)
    writer.add_embedding_length(arch.hidden)
    writer.add_block_count(arch.n_layers)
    writer.add_feed_forward_length(arch.ffn)
    writer.add_head_count(arch.n_head)
    writer.add_head_count_kv(arch.n_head_kv)
    writer.add_rope_freq_base(arch.rope_theta)
    writer.add_layer_norm_rms_eps(arch.rms_eps)
    writer.add_rope_dimension_count(arch.head_dim)
    writer.add_vocab_size(arch.vocab)
    if arch.head_dim * arch.n_head != arch.hidden:
        # llama.cpp derives head size from embedding/heads unless told otherwise.
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
