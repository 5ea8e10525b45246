"""Bytes on disk, the ground floor above errors: atomic files and folders, the bounded GGUF
header scan, and the text corpora (built-in Wikipedia sample, text and JSON-lines files)."""
