"""Edit a lowbit save folder for tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowbit.io.manifest import DIGEST_KEY, content_digest


def write_consistent_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` as a (buggy) saver would have: the weights' digest and the file
    records updated to match, so only lowbit's structural checks can catch what is wrong."""
    weights = folder / "model.safetensors"
    with safe_open(weights, "pt") as f:
        metadata = dict(f.metadata() or {})
    metadata[DIGEST_KEY] = content_digest(manifest)
    save_file(load_file(weights), str(weights), metadata=metadata)
    manifest.setdefault("files", {})["model.safetensors"] = {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
