"""Structure-aware fuzzing of lowbit's readers (issue 15).

One ``Target`` per reader: a valid seed input, a hypothesis strategy of inputs mutated from
it with knowledge of the format (length and count fields overwritten with boundary values,
JSON trees with subtrees replaced, manifests re-signed so the checks behind the digest are
reached), and the reader. Every input must end in success or a LowbitError whose message is
one line (``outcome``). `make fuzz` (tools/fuzz.py) runs the strategies for minutes in
worker processes that also watch time and memory; `make test` runs a short fixed sample and
the committed corpus of found cases (tests/fuzz_corpus/, test_fuzz.py).

Readers covered: GGUF (``read_gguf``), llama.cpp imatrix files (``read_imatrix``, legacy
.dat), safetensors headers (``read_safetensors_header``), lowbit save folders (``load``:
manifest and weights), recipes (``Recipe.from_dict`` of a manifest's JSON) and calibration
text (``read_text``). lowbit reads no ONNX file a user hands it (it only checks the files it
writes), so there is no ONNX target.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from lowbit.errors import InvalidInputError, LowbitError

# values that break length, count and offset fields
BOUNDARY = [0, 1, 2, 7, 8, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
            2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip


@dataclass(frozen=True)
class Target:
    """A reader under fuzzing: ``prepare(work)`` builds what every input shares (the seed's
    other files) and returns the valid seed bytes; ``inputs(seed)`` is the strategy of
    mutated inputs; ``read(work, data)`` writes one input into ``work`` and reads it."""

    name: str
    prepare: Callable[[Path], bytes]
    inputs: Callable[[bytes], st.SearchStrategy[bytes]]
    read: Callable[[Path, bytes], Any]


def outcome(target: Target, work: Path, data: bytes) -> str | None:
    """None when reading ``data`` ended in success or a one-line LowbitError; otherwise what
    went wrong, in one line (the exception's type and first line)."""
    try:
        target.read(work, data)
    except LowbitError as exc:
        message = str(exc)
        if not message.strip() or "\n" in message.strip():
            return f"LowbitError without a one-line message: {message[:200]!r}"
        return None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"{type(exc).__name__}: {first}"
    return None


def signature(problem: str) -> str:
    """A failure's kind without what varies between inputs (numbers, quoted text, paths):
    the corpus keeps one input per signature."""
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", problem)
    problem = re.sub(r"/\S*", "PATH", problem)
    return re.sub(r"\d+", "N", problem)


# ------------------------------------------------------------------------------ mutations
@st.composite
def binary_mutations(draw: st.DrawFn, seed: bytes, header: int) -> bytes:
    """``seed`` with 1-4 edits: overwrite 1/2/4/8 bytes (boundary or random values, little
    endian), truncate, insert or delete a run, or copy one range over another. Positions
    fall in the first ``header`` bytes (where the structure is) three times in four."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        size = len(data)
        in_header = draw(st.integers(0, 3)) > 0
        pos = draw(st.integers(0, max(0, min(header, size) - 1) if in_header else size - 1))
        kind = draw(st.sampled_from(["overwrite", "overwrite", "truncate", "insert", "delete",
                                     "copy"]))  # fmt: skip
        if kind == "overwrite":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.one_of(st.sampled_from(BOUNDARY), st.integers(0, 2**64 - 1)))
            data[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            src = draw(st.integers(0, size - 1))
            n = draw(st.integers(1, 32))
            data[pos : pos + n] = data[src : src + n]
    return bytes(data)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.sampled_from(BOUNDARY), st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "a/../../b", "int8", "int4",
                         "float16", "model.safetensors", "QuantLinear", "\x00", "é" * 40]),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)  # fmt: skip


@st.composite
def json_tree_mutations(draw: st.DrawFn, seed: Any) -> Any:
    """A copy of the JSON tree ``seed`` with 1-3 nodes replaced by other JSON values (types
    changed, huge numbers, hostile strings), deleted, or left out of their list."""
    tree = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(1, 3))):
        parent, key = None, None
        node = tree
        while isinstance(node, dict | list) and node and draw(st.integers(0, 2)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            tree = draw(JSON_VALUES) if draw(st.integers(0, 9)) == 0 else tree
            continue
        if draw(st.booleans()):
            parent[key] = draw(JSON_VALUES)
        elif isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    return tree


def json_mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Tree edits of the JSON document ``seed``, and byte edits of its text."""
    trees = json_tree_mutations(json.loads(seed)).map(lambda t: json.dumps(t).encode())
    return st.one_of(trees, trees, binary_mutations(seed, len(seed)))


def text_mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        binary_mutations(seed, len(seed)),
        st.binary(max_size=64),
        st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
    )


# -------------------------------------------------------------------------------- targets
def small_gguf(path: Path) -> Path:
    """A small valid GGUF at ``path``: strings, numeric and string arrays, F32, F16, Q8_0,
    Q4_0, Q4_1 tensors (the GGUF fuzz seed, and the reader tests' file)."""
    import gguf

    q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "<s>"])
    w.add_array("test.floats", [1.0, 2.0, 3.0])
    w.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((3, 4)).astype(np.float16))
    for name, qtype in (("q8", q.Q8_0), ("q40", q.Q4_0), ("q41", q.Q4_1)):
        data = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _gguf_seed(work: Path) -> bytes:
    return small_gguf(work / "seed.gguf").read_bytes()


def _read_gguf(work: Path, data: bytes) -> None:
    from lowbit.io.gguf import read_gguf

    path = work / "x.gguf"
    path.write_bytes(data)
    read_gguf(path)


def _imatrix_seed(work: Path) -> bytes:
    """save_imatrix_legacy's layout: count, then (name length, name, ncall, nval, values)."""
    entries = {"blk.0.attn_q.weight": (4, [1.0, 2.0, 0.5, 3.0]), "output.weight": (2, [1.0] * 8)}
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    return out + struct.pack("<i", 10) + struct.pack("<i", 9) + b"calib.txt"


def _read_imatrix(work: Path, data: bytes) -> None:
    from lowbit.io.gguf.imatrix import read_imatrix

    path = work / "x.dat"
    path.write_bytes(data)
    read_imatrix(path)


def _safetensors_seed(work: Path) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.int8),
                 "c": torch.zeros(0, 5, dtype=torch.float16)}, metadata={"k": "v"})  # fmt: skip


def _read_safetensors_header(work: Path, data: bytes) -> None:
    from lowbit.io.inspect import read_safetensors_header

    path = work / "x.safetensors"
    path.write_bytes(data)
    read_safetensors_header(path)


def _tiny_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))


def _save_seed(work: Path) -> Path:
    """A lowbit save folder of the tiny model (w4a16-g16), made once per worker."""
    import lowbit

    folder = work / "seed-save"
    if not folder.is_dir():
        lowbit.save(lowbit.quantize(_tiny_model(), "w4a16-g16"), folder)
    return folder


def _manifest_seed(work: Path) -> bytes:
    return (_save_seed(work) / "manifest.json").read_bytes()


def _read_manifest_input(work: Path, data: bytes) -> None:
    """The mutated manifest, re-signed (weights digest and file records updated, as a buggy
    saver would write it) when it is a JSON object, so every check behind the digest runs."""
    import lowbit
    from lowbit_testkit.saves import write_consistent_manifest

    folder = work / "save"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(_save_seed(work), folder)
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("files", {}), dict):
        write_consistent_manifest(folder, manifest)
    else:
        (folder / "manifest.json").write_bytes(data)
    lowbit.load(folder, _tiny_model())


def _weights_seed(work: Path) -> bytes:
    return (_save_seed(work) / "model.safetensors").read_bytes()


def _read_weights_input(work: Path, data: bytes) -> None:
    import lowbit

    folder = work / "save"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(_save_seed(work), folder)
    (folder / "model.safetensors").write_bytes(data)
    lowbit.load(folder, _tiny_model())


def _recipe_seed(work: Path) -> bytes:
    manifest = json.loads(_manifest_seed(work))
    return json.dumps(manifest["recipe"]).encode()


def _read_recipe(work: Path, data: bytes) -> None:
    from lowbit.recipes.spec import Recipe

    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"not JSON: {exc}") from exc
    Recipe.from_dict(document)


def _text_seed(work: Path) -> bytes:
    return "Quantization maps floats to integers.\nÉtape deux: l'échelle.\n".encode()


def _read_text(work: Path, data: bytes) -> None:
    from lowbit.eval.text import read_text

    path = work / "calib.txt"
    path.write_bytes(data)
    read_text(path)


def _header(size: int) -> Callable[[bytes], st.SearchStrategy[bytes]]:
    return lambda seed: binary_mutations(seed, size)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("gguf", _gguf_seed, _header(512), _read_gguf),
        Target("imatrix", _imatrix_seed, _header(256), _read_imatrix),
        Target("safetensors", _safetensors_seed, _header(256), _read_safetensors_header),
        Target("save-manifest", _manifest_seed, json_mutations, _read_manifest_input),
        Target("save-weights", _weights_seed, _header(1024), _read_weights_input),
        Target("recipe", _recipe_seed, json_mutations, _read_recipe),
        Target("calib-text", _text_seed, text_mutations, _read_text),
    )
}


@cache
def seed_bytes(name: str, work: Path) -> bytes:
    """The valid seed of target ``name`` (its shared files prepared in ``work``)."""
    return TARGETS[name].prepare(work)
