"""GGUF files: per-tensor type choice (types.py) and the writer (writer.py)."""
