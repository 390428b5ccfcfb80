"""``export_gguf``: a GGUF (or Hugging Face) model to a llama.cpp file of one type, with the
values chosen by a method: rtn (llama-quantize without an imatrix), imatrix, gptq or awq.

A method is a function GGUFExportJob -> ChosenValues, registered in GGUF_METHODS; the writer
puts what it chose into llama-quantize's per-tensor types and byte layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.export.gguf_calibrated import awq_method, gptq_method
from lowbit.export.gguf_imatrix import imatrix_method
from lowbit.export.gguf_mixed import (
    DEFAULT_GGUF_CANDIDATES,
    GGUFTarget,
    check_candidates,
    mixed_tensor_types,
)
from lowbit.io.gguf.writer import (
    ChosenValues,
    ExportResult,
    check_export_args,
    gguf_source,
    open_source,
    plan_types,
    source_bytes,
    write_gguf,
)


@dataclass
class GGUFExportJob:
    """What a method needs to choose values: the source, the planned type of every tensor
    (GGUF names, llama-quantize's rules), the architecture and the calibration inputs."""

    source: Path
    file_type: str
    calib: Path | None = None
    imatrix: Path | None = None
    seq_len: int = 512
    calib_windows: int | None = None
    plan: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.metadata["general.architecture"])

    def kv_int(self, key: str, default: int = 0) -> int:
        """An integer architecture key ("block_count", "attention.head_count", ...)."""
        return int(self.metadata.get(f"{self.arch}.{key}", default))

    def calibration_text(self) -> str:
        """The text calibrated methods run: ``calib``, else lowbit's calibration split (never
        the evaluation split)."""
        from lowbit.eval.text import calibration_text, read_text

        return read_text(self.calib) if self.calib is not None else calibration_text()

    def linear_tensors(self, model: Any) -> dict[str, str]:
        """{module name: GGUF tensor name} of ``model``'s nn.Linear layers that have a tensor
        in the file (names as llama.cpp's converter maps them)."""
        from torch import nn

        from lowbit.io.gguf.names import gguf_tensor_name

        n_blocks = self.kv_int("block_count")
        found = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                gguf_name = gguf_tensor_name(f"{name}.weight", self.arch, n_blocks)
                if gguf_name is not None and gguf_name in self.shapes:
                    found[name] = gguf_name
        return found

    @cached_property
    def float_model(self):
        """The source as a float32 transformers model and its tokenizer (lowbit.io.hf's
        LoadedModel), loaded once, for the methods that run calibration data through it."""
        from lowbit.io.hf import load_model

        return load_model(self.source, task="causal-lm")


Method = Callable[[GGUFExportJob], ChosenValues]
# The written header can outgrow the source's: a new general.file_type, quantize.imatrix.* keys.
HEADER_MARGIN_BYTES = 1024


def _rtn(job: GGUFExportJob) -> ChosenValues:
    """Round to nearest in every block type: the file llama-quantize writes without imatrix
    (export_gguf writes it without building a job; listed here so every method is one table)."""
    return ChosenValues()


GGUF_METHODS: dict[str, Method] = {
    "rtn": _rtn,
    "imatrix": imatrix_method,
    "gptq": gptq_method,
    "awq": awq_method,
}


def _check_inputs(
    method: str, calib: Path | None, imatrix: Path | None, seq_len: int, windows: int | None
) -> None:
    if method not in GGUF_METHODS:
        raise UnsupportedFormatError(
            f"unknown --method {method!r}; available: {', '.join(GGUF_METHODS)}"
        )
    if seq_len < 8 or (windows is not None and windows < 1):
        raise InvalidInputError(
            f"need --seq-len >= 8 and --calib-windows >= 1 (got {seq_len} and {windows})"
        )
    for flag, path in (("--calib", calib), ("--imatrix", imatrix)):
        if path is not None and not path.is_file():
            raise InvalidInputError(f"{flag} {str(path)!r} is not a file; check the path")


def export_gguf(
    model: str | os.PathLike,
    out: str | os.PathLike,
    file_type: str,
    *,
    method: str = "rtn",
    calib: str | os.PathLike | None = None,
    imatrix: str | os.PathLike | None = None,
    seq_len: int = 512,
    calib_windows: int | None = None,
    target: GGUFTarget | None = None,
    candidates: tuple[str, ...] = DEFAULT_GGUF_CANDIDATES,
) -> ExportResult:
    """Export ``model`` to ``out`` as GGUF ``file_type`` with values chosen by ``method``.

    Args:
        model: a GGUF file (llama family or BERT) or a Hugging Face folder (LlamaForCausalLM,
            BertModel; see lowbit.io.gguf.convert).
        out: the .gguf file to write (replaced atomically; inputs are never modified).
        file_type: "q8_0", "q4_k_m", "f16", ... (lowbit.io.gguf.types.FILE_TYPES).
        method: one of GGUF_METHODS.
        calib: a calibration text file, for the methods that calibrate.
        imatrix: llama.cpp's importance-matrix file, for method "imatrix".
        seq_len: tokens per calibration window.
        calib_windows: calibration windows for gptq/awq (None: the method's default).
        target: mixed precision: choose each tensor's block type from ``candidates`` so the
            whole file fits this size (lowbit.export.gguf_mixed); ``file_type`` then gives
            the tensors lowbit does not choose (norms) and the file's type label.
    """
    out = Path(out)
    calib_path = Path(calib) if calib is not None else None
    imatrix_path = Path(imatrix) if imatrix is not None else None
    check_export_args(file_type, out)
    _check_inputs(method, calib_path, imatrix_path, seq_len, calib_windows)
    if target is not None:
        check_candidates(candidates)
    if method == "rtn" and target is None:
        # llama-quantize's file (the converter's own for an HF float type)
        return write_gguf(model, out, file_type)
    from lowbit.io.gguf.reader import read_gguf

    # a Hugging Face folder is read as the converter's F32 file (source stays the folder, so
    # float_model loads it with transformers)
    # every calibrated method plans as llama-quantize given an imatrix (docs/decisions.md)
    has_imatrix = method != "rtn"
    with gguf_source(model, out) as src:
        reader = open_source(src)
        infos, types = plan_types(reader, file_type, has_imatrix=has_imatrix)
        job = GGUFExportJob(
            source=Path(model), file_type=file_type, calib=calib_path, imatrix=imatrix_path,
            seq_len=seq_len, calib_windows=calib_windows,
            plan={i.name: t for i, t in zip(infos, types, strict=True)},
            shapes={i.name: i.shape for i in infos}, metadata=dict(read_gguf(src).metadata),
        )  # fmt: skip
        overrides, account = None, None
        if target is not None:
            header = reader.data_offset + HEADER_MARGIN_BYTES
            overrides, account = mixed_tensor_types(job, infos, header, target, candidates)
            job.plan.update(overrides)
        chosen = GGUF_METHODS[method](job)
        result = write_gguf(
            src, out, file_type, chosen=chosen, has_imatrix=has_imatrix,
            tensor_types=overrides, reader=reader,
        )  # fmt: skip
    return replace(result, input_bytes=source_bytes(model), mixed=account)
