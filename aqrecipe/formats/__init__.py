"""Bytes on disk, the ground floor above errors: atomic files and folders, the bounded GGUF header
scan, the text corpora (built-in Wikipedia sample, text and JSON-lines files), the one bounded
reader of files read whole (bounded) and the one rule for output paths (paths)."""
