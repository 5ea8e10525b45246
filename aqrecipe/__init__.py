"""aqrecipe: an LLM quantization compiler.

A versioned YAML recipe is validated against a JSON Schema, compiled to an
inspectable plan (headers only), then applied: calibrate, transform, pack with
the Rust codecs, write GGUF or compressed-tensors, evaluate, report.

Importing this package never imports torch; the stages that need it import it
lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
