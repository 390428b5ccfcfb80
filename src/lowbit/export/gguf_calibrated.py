"""GPTQ and AWQ for GGUF export: values chosen on calibration text, stored in exactly the
block types llama-quantize plans for each tensor, so the file has llama.cpp's size and runs
in every llama.cpp build.

Both go through lowbit's one block-wise pipeline (``recipes.blockwise.quantize_blockwise``):
the transformer blocks are calibrated in order, each on the outputs of the blocks already
quantized. Only the storage differs from lowbit's own formats (:class:`CodecLayers`): every
Linear is encoded in its planned ggml type, and its float weight is replaced by what those
bytes dequantize to, which later blocks then see.

* gptq: ``algorithms.gptq_blocks`` (Frantar et al. 2022) in the type's grid: the block
  parameters llama-quantize --imatrix would write (ggml's search weighted by diag(H)), the
  codes chosen by GPTQ with the columns in decreasing diag(H) (act order).
  The output head is outside the blocks, so it is quantized after them the same way, with
  H from its inputs on the quantized model (the final norm's outputs): ``output.weight``,
  or ``token_embd.weight`` where the head is tied to the token embedding (SmolLM2). Tied,
  the one table serves two uses and GPTQ minimises the logits' error, not the lookup's;
  measured on SmolLM2's 4.5 bpw file, it is the larger share of the error
  (docs/decisions.md "GPTQ on the output head").
* awq: AWQ's per-input-channel scales (Lin et al. 2023, ``algorithms.transforms.awq``)
  searched with the codec's round trip as the quantizer, folded exactly into the op before:
  the RMSNorm weights (attn_norm, ffn_norm, written as float replacements) and up_proj's
  rows for down_proj. Nothing outside the blocks changes, so a tied output embedding
  (SmolLM2's) is untouched. The scaled weights are then rounded by ggml's search.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.formats.blocks import BLOCK_TYPES, BlockCodec, get_block_codec
from lowbit.io.gguf.names import gguf_tensor_name, hf_rows_to_gguf, permuted_heads
from lowbit.io.gguf.writer import ChosenValues
from lowbit.observers.hessian import HessianObserver
from lowbit.observers.hooks import ObserverHook
from lowbit.recipes.batches import observe_batches

log = logging.getLogger(__name__)

DEFAULT_CALIB_WINDOWS = 16  # windows of job.seq_len tokens; a few minutes for SmolLM2 on 2 cores
AWQ_SEARCH_ROWS = 128  # output rows per weight that AWQ's scale search quantizes (see fake)


class CodecLayers:
    """A ``recipes.blockwise.LayerQuantizer`` for GGUF: each planned Linear is encoded in its
    ggml type (GPTQ in the grid when a Hessian is given, else ggml's round to nearest) and
    keeps a float weight equal to the decoded bytes.

    Args:
        codecs: module name -> the codec of its planned type.
        damp: GPTQ's dampening (fraction of mean diag H).
        importance: what weights the codec's block parameter search under GPTQ ("hessian"
            or "none", see ``gptq_blocks``).
    """

    clip_search = False  # ggml's searches choose each block's range themselves

    def __init__(
        self, codecs: dict[str, BlockCodec], *, damp: float = 0.01, importance: str = "hessian"
    ) -> None:
        self.codecs = codecs
        self.damp = damp
        self.importance = importance
        self.encoded: dict[str, torch.Tensor] = {}

    def fake(self, name: str, spec: Any) -> Any:
        """The codec's round trip on every k-th row (at most AWQ_SEARCH_ROWS rows), the other
        rows left exact: AWQ's loss sums over output rows, so this is its loss on a fixed
        subset of rows (20 scale candidates x ggml's k-quant searches on every row would
        dominate the export's time)."""
        codec = self.codecs[name]

        def fake_quantize(w: torch.Tensor) -> torch.Tensor:
            rows = slice(None, None, max(1, -(-w.shape[0] // AWQ_SEARCH_ROWS)))
            out = w.clone()
            out[rows] = codec.dequantize(codec.quantize(w[rows]), w.shape[1])
            return out

        return fake_quantize

    def quantize(self, block, local, name, module, spec, hessian, clip) -> None:
        from lowbit.algorithms.gptq_blocks import gptq_blocks

        codec = self.codecs[name]
        w = module.weight.data
        if hessian is not None:
            raw = gptq_blocks(w, hessian, codec, damp=self.damp, importance=self.importance)
        else:
            raw = codec.quantize(w.float())
        self.encoded[name] = raw
        w.copy_(codec.dequantize(raw, w.shape[1]).to(w.dtype))


def _targets(job, model: nn.Module) -> dict[str, tuple[str, BlockCodec]]:
    """Linear module name -> (GGUF tensor name, codec of its planned block type)."""
    return {
        name: (gguf_name, get_block_codec(job.plan[gguf_name]))
        for name, gguf_name in job.linear_tensors(model).items()
        if job.plan.get(gguf_name, "").lower() in BLOCK_TYPES
    }


def _calibration_batches(job, tokenizer) -> list[Any]:
    from lowbit.eval.calibration import token_windows

    if tokenizer is None:
        raise InvalidInputError(
            f"{job.source} has no tokenizer, so calibration text cannot be tokenized; export "
            "a GGUF file that carries llama.cpp's tokenizer metadata"
        )
    windows = job.calib_windows or DEFAULT_CALIB_WINDOWS
    return token_windows(tokenizer, job.calibration_text(), samples=windows, seq_len=job.seq_len)


def _head_tensor(job, model: nn.Module) -> tuple[str, nn.Linear] | None:
    """(GGUF tensor, module) of the output head where the plan stores it in a block type:
    ``output.weight``, or ``token_embd.weight`` where the head is tied to the embedding."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    tied = head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    name = "token_embd.weight" if tied else "output.weight"
    if job.plan.get(name, "").lower() not in BLOCK_TYPES:
        return None
    return name, head


def head_hessian(model: nn.Module, head: nn.Linear, batches: list[Any]) -> torch.Tensor:
    """H = 2/n·XᵀX of the head's inputs over the calibration windows (float64 sums)."""
    observer = HessianObserver(head.in_features, dtype=torch.float64)
    observe_batches(model, [ObserverHook(head, observer, on="input")], batches, "output head")
    return observer.hessian()


def _quantize_head(job, model: nn.Module, batches: list[Any], store: CodecLayers) -> dict:
    """{GGUF name: bytes} of the output head quantized by GPTQ in its planned type, after
    the blocks (so H sees the quantized model); {} where the head has no block type or
    round to nearest already reproduces it (the writer's rounding then does)."""
    from lowbit.algorithms.gptq_blocks import gptq_blocks

    found = _head_tensor(job, model)
    if found is None:
        return {}
    name, head = found
    codec = get_block_codec(job.plan[name])
    w = head.weight.data
    if torch.equal(codec.dequantize(codec.quantize(w.float()), w.shape[1]), w.float()):
        return {}  # already on the type's grid (a Q8_0 source kept Q8_0): no error to spread
    hessian = head_hessian(model, head, batches)
    raw = gptq_blocks(w, hessian, codec, damp=store.damp, importance=store.importance)
    w.copy_(codec.dequantize(raw, w.shape[1]).to(w.dtype))
    return {name: raw.numpy()}


def _norm_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every norm weight (the only float tensors AWQ's folds change)."""
    from lowbit.recipes.blockwise import is_norm

    return {n: m.weight.detach().clone() for n, m in model.named_modules() if is_norm(m)}


def calibrated_values(job, algorithm: str, layers: CodecLayers | None = None) -> ChosenValues:
    """Run ``algorithm`` ("gptq" or "awq") block by block over ``job``'s float model on its
    calibration windows and return the encoded tensors (GGUF names and row order) and, for
    AWQ, the norms its scales were folded into. The job's float model is changed in place."""
    from lowbit.recipes.blockwise import quantize_blockwise
    from lowbit.recipes.spec import QuantSpec

    loaded = job.float_model
    model = loaded.model
    targets = _targets(job, model)
    if not targets:
        raise InvalidInputError(
            f"{job.source}: no Linear weight of the model has a block type in the "
            f"{job.file_type} plan; use --method rtn"
        )
    batches = _calibration_batches(job, loaded.tokenizer)
    store = layers or CodecLayers({n: c for n, (_, c) in targets.items()})
    norms_before = _norm_weights(model)
    log.info("%s: %d layers, %d calibration windows", algorithm, len(targets), len(batches))
    quantize_blockwise(
        model, {n: QuantSpec(algorithm=algorithm) for n in targets}, batches, layers=store
    )

    n_head = job.kv_int("attention.head_count")
    n_head_kv = job.kv_int("attention.head_count_kv", n_head)
    encoded = {}
    for name, raw in store.encoded.items():
        gguf_name = targets[name][0]
        heads = permuted_heads(gguf_name, job.arch, n_head, n_head_kv)
        rows = raw.numpy()
        encoded[gguf_name] = hf_rows_to_gguf(rows, heads) if heads else rows
    if algorithm == "gptq":
        encoded.update(_quantize_head(job, model, batches, store))
    floats = {}
    n_blocks = job.kv_int("block_count")
    for name, weight in _norm_weights(model).items():
        if torch.equal(weight, norms_before[name]):
            continue
        gguf_name = gguf_tensor_name(f"{name}.weight", job.arch, n_blocks)
        if gguf_name not in job.plan:
            raise InvalidInputError(f"{name} was rescaled but has no tensor in the GGUF file")
        floats[gguf_name] = weight.numpy().astype(np.float32)
    return ChosenValues(encoded=encoded, floats=floats)


def gptq_method(job) -> ChosenValues:
    """``--method gptq``: GPTQ inside each tensor's planned ggml type (module docstring)."""
    return calibrated_values(job, "gptq")


def awq_method(job) -> ChosenValues:
    """``--method awq``: AWQ scales folded into the norms / up_proj, then ggml's rounding."""
    return calibrated_values(job, "awq")
