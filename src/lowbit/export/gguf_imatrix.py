"""``--method imatrix``: ggml's importance-weighted rounding, as llama-quantize with an imatrix.

The importance of a weight column j is E[x_j²] over calibration tokens of the layer's input x
(llama.cpp's imatrix). It comes from llama.cpp's own file (``--imatrix FILE``, read by
:func:`lowbit.io.gguf.imatrix.read_imatrix`) or lowbit computes it (``--calib FILE``, default
the bundled ``lowbit.eval.text.calibration_text()``) by running the float model over the text
cut as llama-imatrix cuts it (:func:`llama_imatrix_windows`). The writer then encodes every
covered tensor with ggml's ``quantize_<type>(..., quant_weights)`` search and the rest to
nearest, as llama-quantize does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.io.gguf.imatrix import read_imatrix
from lowbit.io.gguf.writer import ChosenValues
from lowbit.observers.hooks import ObserverHook
from lowbit.observers.squares import SquaresObserver
from lowbit.recipes.batches import observe_batches

if TYPE_CHECKING:  # lowbit.export.gguf registers this method, so it imports this module
    from lowbit.export.gguf import GGUFExportJob

logger = logging.getLogger(__name__)


def llama_imatrix_windows(
    tokenizer: Any, text: str, seq_len: int, bos_id: int | None
) -> list[torch.Tensor]:
    """The token windows llama-imatrix runs (tools/imatrix/imatrix.cpp ``compute_imatrix``).

    The whole text is tokenized once (BOS first when ``bos_id`` is given: the vocabulary's
    add_bos); it is cut into len // seq_len consecutive windows (a trailing partial window is
    dropped) and, with BOS, the first token of every window is replaced by BOS.

    Returns: int64 tensors (seq_len,), one per window.
    """
    if seq_len < 1:
        raise InvalidInputError(f"seq_len must be at least 1, got {seq_len}")
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if bos_id is not None:
        ids = [bos_id, *ids]
    n = len(ids) // seq_len
    if n == 0:
        raise InvalidInputError(
            f"the calibration text has {len(ids)} tokens, fewer than one window of {seq_len}; "
            "give a longer --calib text"
        )
    windows = torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    if bos_id is not None:
        windows[:, 0] = bos_id
    return list(windows)


def compute_importance(
    model: nn.Module, windows: list[torch.Tensor], names: dict[str, str]
) -> dict[str, torch.Tensor]:
    """E[x²] per input column of the Linear layers in ``names`` ({module name: GGUF name})
    over ``windows`` of token ids, through lowbit's calibration loop (observe_batches).

    Returns: {GGUF name: float32 (in_features,)}.
    """
    modules = dict(model.named_modules())
    observers = {name: SquaresObserver() for name in names}
    hooks = [ObserverHook(modules[n], obs, on="input") for n, obs in observers.items()]
    batches = [{"input_ids": w.unsqueeze(0), "use_cache": False} for w in windows]
    observe_batches(model, hooks, batches, "imatrix")
    return {names[n]: obs.mean_squares() for n, obs in observers.items()}


def imatrix_layers(model: nn.Module, job: GGUFExportJob) -> dict[str, str]:
    """{module name: GGUF name} of the Linear layers llama-imatrix collects by default: those
    whose weight is a "blk.*" tensor of the file (not output.weight: --process-output is off)."""
    return {m: g for m, g in job.linear_tensors(model).items() if g.startswith("blk.")}


def check_importance(importance: dict[str, torch.Tensor], job: GGUFExportJob) -> dict:
    """Importance vectors that fit the model: one value per column of a tensor it has.

    An unknown name or another length is an error (the imatrix belongs to another model),
    except token_embd.weight, which llama-quantize skips with a message when its size differs.
    """
    kept = {}
    for name, values in importance.items():
        shape = job.shapes.get(name)
        if shape is None:
            raise InvalidInputError(
                f"the imatrix has {name!r}, which {job.source.name} does not have: it was made "
                "for another model; make it with llama-imatrix on this model"
            )
        if values.numel() != shape[0]:
            if name == "token_embd.weight":
                logger.info("imatrix size differs for token_embd.weight: rounded to nearest")
                continue
            raise InvalidInputError(
                f"the imatrix has {values.numel()} values for {name!r}, whose rows have "
                f"{shape[0]}: it was made for another model; make it on this model"
            )
        kept[name] = values
    return kept


def _c_string(text: str) -> str:
    """llama-quantize keeps at most 127 bytes of a string it writes (strncpy into val_str)."""
    return text.encode("utf-8")[:127].decode("utf-8", "ignore")


def _computed(job: GGUFExportJob) -> tuple[dict[str, torch.Tensor], int]:
    """Importance computed on the calibration text, and the number of windows it took."""
    loaded = job.float_model
    add_bos = job.metadata.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:  # llama.cpp's per-vocabulary default; the tokenizer's own here
        add_bos = bool(getattr(loaded.tokenizer, "add_bos_token", False))
    bos = job.metadata.get("tokenizer.ggml.bos_token_id") if add_bos else None
    if add_bos and not isinstance(bos, int):
        raise InvalidInputError(
            f"{job.source.name} adds BOS but has no tokenizer.ggml.bos_token_id; "
            "convert it again with llama.cpp's convert_hf_to_gguf.py"
        )
    windows = llama_imatrix_windows(loaded.tokenizer, job.calibration_text(), job.seq_len, bos)
    layers = imatrix_layers(loaded.model, job)
    return compute_importance(loaded.model, windows, layers), len(windows)


def imatrix_method(job: GGUFExportJob) -> ChosenValues:
    """Importance from ``--imatrix`` (llama.cpp's file) or computed from ``--calib`` text
    (default: lowbit's calibration text) with ``job.seq_len``-token windows."""
    if job.imatrix is not None and job.calib is not None:
        raise InvalidInputError(
            "pass --imatrix (llama.cpp's importance file) or --calib (lowbit computes the "
            "importance from the text), not both"
        )
    # llama-quantize's metadata (tools/quantize/quantize.cpp, after an imatrix is loaded)
    kv: dict[str, str | int] = {}
    if job.imatrix is not None:
        imatrix = read_imatrix(job.imatrix)
        importance, chunks = imatrix.importance, imatrix.chunk_count
        kv["quantize.imatrix.file"] = _c_string(str(job.imatrix))
        if imatrix.datasets:
            kv["quantize.imatrix.dataset"] = _c_string(imatrix.datasets[0])
    else:
        importance, chunks = _computed(job)
        source = str(job.calib) if job.calib is not None else "lowbit calibration_text()"
        kv["quantize.imatrix.dataset"] = _c_string(source)
    kv["quantize.imatrix.entries_count"] = len(importance)
    if chunks > 0:
        kv["quantize.imatrix.chunks_count"] = chunks
    return ChosenValues(importance=check_importance(importance, job), kv=kv)
