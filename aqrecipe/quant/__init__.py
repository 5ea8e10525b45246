"""Quantization's Python face: the block-type table and the Rust codecs that encode and decode it."""
