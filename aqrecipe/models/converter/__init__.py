"""llama.cpp's own Hugging Face -> GGUF conversion, run lazily as aqrecipe's model reader."""
