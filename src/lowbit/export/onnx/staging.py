"""Where an ONNX export is written before it is checked: a scratch folder beside the output,
moved into place only when the block ends without an error, so a file that fails its check
never replaces the user's old one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lowbit.atomic import clean_stale, scratch_folder

# Above this many bytes of weights the tensors go to one external data file beside the .onnx
# (protobuf caps a message at 2 GiB; the graph itself needs some room).
EXTERNAL_DATA_BYTES = 1_800_000_000


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yield the path to write ``path``'s .onnx at (external data beside it); on a clean
    exit move every file written there into place, the .onnx last, so a reader never
    sees a graph whose data is missing."""
    with scratch_folder(path) as folder:
        target = folder / path.name
        yield target
        clean_stale(path)
        for item in sorted(folder.iterdir(), key=lambda p: p == target):
            os.replace(item, path.parent / item.name)


def staged_bytes(target: Path) -> int:
    """Bytes of every file written beside ``target`` (the .onnx and its external data)."""
    return sum(p.stat().st_size for p in target.parent.iterdir() if p.is_file())
