"""Writers of the results: packing plan entries, GGUF files, safetensors folders of the
simulated model, and W8A8 outputs (compressed-tensors, Q8_0 GGUF)."""
