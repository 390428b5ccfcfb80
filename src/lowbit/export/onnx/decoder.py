"""``export_decoder``: a llama-family causal LM (lowbit weight-only quantized, or float) as an
ONNX decoder graph with past key/values, checked in ONNX Runtime before it is moved into place.

The graph is built from the model's config and layers (decoder_graph); quantized layers keep
lowbit's codes and scales bit for bit (decoder_weights); decoder_session runs it (greedy
generation, perplexity). Verification: onnx.checker, then ORT against lowbit's PyTorch model:
logits SQNR on a left-padded batch of the prompts, the same greedy tokens for 32 steps on each
prompt, and perplexity within 1% on the prompts and their continuations.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.errors import InvalidInputError, LowbitError
from lowbit.eval.perplexity import perplexity
from lowbit.export.onnx.api import OnnxExportResult, Verification
from lowbit.export.onnx.decoder_graph import build_decoder
from lowbit.export.onnx.decoder_session import DecoderSession, generate_greedy, ort_perplexity
from lowbit.export.onnx.decoder_weights import int8_accuracy_level
from lowbit.export.onnx.runtime import require_onnx
from lowbit.export.onnx.staging import EXTERNAL_DATA_BYTES, staged, staged_bytes
from lowbit.export.onnx.verify import reference_copy
from lowbit.formats.sqnr import sqnr_db

logger = logging.getLogger(__name__)

GREEDY_STEPS = 32
PPL_TOLERANCE = 0.01
MIN_SQNR_DB = 30.0  # logits against the reference kernels (issue 14's acceptance)
_ALIGN = 4096  # external data offsets page-aligned, so ORT can map them


class DecoderVerificationError(LowbitError):
    """The exported decoder disagrees with the PyTorch model (tokens or perplexity)."""


def _check_opset(opset: int | None, target: str) -> bool:
    """True when quantized layers use standard DequantizeLinear (opset >= 21, TensorRT or
    OpenVINO)."""
    if opset is None:
        return target in ("tensorrt", "openvino")
    if not 21 <= opset <= 23:
        raise InvalidInputError(
            f"opset {opset}: the decoder graph needs opset 21..23 (blocked DequantizeLinear "
            "came in 21); pass opset=21, or None for ONNX Runtime's MatMulNBits"
        )
    return True


def _prompts(example_inputs: Any, vocab: int) -> list[torch.Tensor]:
    """The prompts (1-D int64 each) from token ids [batch, seq], a dict with input_ids and
    attention_mask (padding dropped), or None (three fixed pseudo-random prompts)."""
    if example_inputs is None:
        gen = torch.Generator().manual_seed(0)
        return [torch.randint(0, vocab, (n,), generator=gen) for n in (7, 12, 16)]
    mask = None
    if isinstance(example_inputs, dict):
        if "input_ids" not in example_inputs:
            raise InvalidInputError(
                "a dict of example inputs for a causal LM needs 'input_ids' (and optionally "
                f"'attention_mask'), got keys {sorted(example_inputs)}"
            )
        mask = example_inputs.get("attention_mask")
        example_inputs = example_inputs["input_ids"]
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 2:
        shape = tuple(getattr(example_inputs, "shape", ()))
        raise InvalidInputError(
            "example_inputs for a causal LM are token ids [batch, seq] (a 2-D integer tensor), "
            f"a dict with input_ids/attention_mask, or None; got {type(example_inputs).__name__}"
            f" of shape {shape}"
        )
    if example_inputs.is_floating_point() or example_inputs.is_complex():
        raise InvalidInputError("token ids must be integers, got a floating-point tensor")
    ids = example_inputs.long()
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise InvalidInputError(
            f"token ids must lie in [0, {vocab}) (the model's vocabulary) and be non-empty"
        )
    if mask is None:
        return list(ids)
    mask = torch.as_tensor(mask)
    if mask.shape != ids.shape:
        raise InvalidInputError(
            f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(ids.shape)}"
        )
    prompts = [row[m.bool()] for row, m in zip(ids, mask, strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise InvalidInputError("a prompt is all padding: every row needs a token")
    return prompts


def _left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _torch_greedy(model: nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy tokens of the PyTorch model with its KV cache (argmax, no EOS stop)."""
    ids = prompt.unsqueeze(0)
    out = model(ids, use_cache=True)
    tokens = []
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
        key = "cache" if "cache" in out else "past_key_values"  # transformers 5 renamed it
        out = model(token, use_cache=True, **{key: out[key]})
    return torch.cat([ids, *tokens], dim=1)[0]


def _write(model_proto: Any, path: Path) -> None:
    """Write ``model_proto`` at ``path`` (a staged path); weights above EXTERNAL_DATA_BYTES
    go to ``{path.name}.data`` beside it, page-aligned."""
    onnx = require_onnx()
    tensors = [t for t in model_proto.graph.initializer if len(t.raw_data) >= 1024]
    if sum(len(t.raw_data) for t in tensors) > EXTERNAL_DATA_BYTES:
        data_path = path.with_name(path.name + ".data")
        with open(data_path, "wb") as f:
            for tensor in tensors:
                offset = -(-f.tell() // _ALIGN) * _ALIGN
                f.write(b"\0" * (offset - f.tell()))
                f.write(tensor.raw_data)
                onnx.external_data_helper.set_external_data(
                    tensor, data_path.name, offset, len(tensor.raw_data)
                )
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
    path.write_bytes(model_proto.SerializeToString())


def _has_int8_linear(model: nn.Module) -> bool:
    """Whether a weight-only QuantLinear has 5-8-bit codes (written as 8-bit MatMulNBits)."""
    from lowbit.nn import QuantLinear

    return any(
        isinstance(m, QuantLinear)
        and getattr(m.weight, "qtype", None) is not None
        and m.weight.qtype.bits > 4
        for m in model.modules()
    )


def _float_layers(model: nn.Module) -> dict[str, str]:
    from lowbit.nn import QuantEmbedding, QuantLinear

    return {
        name: "float in the model (lowbit left it float): written as MatMul/Gather"
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Embedding))
        and not isinstance(m, (QuantLinear, QuantEmbedding))
    }


def verify_decoder(
    model: nn.Module, path: Path, prompts: list[torch.Tensor], *, steps: int = GREEDY_STEPS
) -> Verification:
    """Compare the ONNX decoder at ``path`` (in ORT) with ``model``: logits on a left-padded
    batch of ``prompts``, greedy tokens for ``steps`` steps per prompt, perplexity on the
    prompts with their continuations. The reference is ``model`` on lowbit's reference
    kernels (``reference_kernels``); the SQNR against its fast kernels is reported too.
    Raises DecoderVerificationError on a mismatch."""
    onnx = require_onnx()
    onnx.checker.check_model(str(path))
    session = DecoderSession(path)
    exact = reference_copy(model) or model
    ids, mask = _left_pad(prompts)
    real = mask.bool()
    with torch.inference_mode():
        logits = torch.from_numpy(session.run(ids.numpy(), mask.numpy())[0])[real]
        ref, fast = (
            m(ids, attention_mask=mask, position_ids=_positions(mask)).logits.float()[real]
            for m in (exact, model)
        )
        sqnr, sqnr_fast = sqnr_db(ref, logits), sqnr_db(fast, logits)
        max_err = float((ref - logits).abs().max())
        differ = []
        torch_seqs = []
        for k, prompt in enumerate(prompts):
            want = _torch_greedy(exact, prompt, steps)
            have = generate_greedy(session, prompt.unsqueeze(0), steps)[0]
            torch_seqs.append(want)
            if not torch.equal(want, have):
                first = int((want != have).nonzero()[0]) - len(prompt)
                differ.append(f"prompt {k}: first differs at new token {first}")
        text = torch.cat(torch_seqs)
        limit = getattr(model.config, "max_position_embeddings", 512)
        ctx = max(2, min(512, limit, len(text)))
        ppl_torch = perplexity(exact, text, ctx=ctx, stride=ctx).ppl
        ppl_ort = ort_perplexity(session, text, ctx=ctx, stride=ctx).ppl
    rel = abs(ppl_ort / ppl_torch - 1)
    detail = (
        f"{len(prompts)} prompts: logits SQNR {sqnr:.1f} dB on a left-padded batch "
        f"({sqnr_fast:.1f} dB against lowbit's fast bf16 kernels), greedy "
        f"{steps} tokens {'equal' if not differ else 'DIFFER (' + '; '.join(differ) + ')'}, "
        f"perplexity ORT {ppl_ort:.4f} vs PyTorch {ppl_torch:.4f} ({100 * rel:.2f}%)"
    )
    if differ or not rel <= PPL_TOLERANCE or not sqnr >= MIN_SQNR_DB:
        raise DecoderVerificationError(
            f"the ONNX decoder {path.name} disagrees with the PyTorch model: {detail}. "
            "Report this with the model and preset; export with verify=False (--no-verify) "
            "to write such a file anyway"
        )
    return Verification(sqnr_db=sqnr, max_abs_error=max_err, same_tokens=True, detail=detail)


def export_decoder(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    target: str = "ort",
    opset: int | None = None,
    verify: bool = True,
) -> OnnxExportResult:
    """Write a llama-family causal LM as an ONNX decoder graph with past key/values.

    Args:
        model: a transformers LlamaForCausalLM, float or quantized weight-only by lowbit
            (QuantLinear -> MatMulNBits, QuantEmbedding -> GatherBlockQuantized).
        example_inputs: prompts for verification: token ids [batch, seq], a dict with
            input_ids and attention_mask (padding dropped per row), or None (3 fixed prompts).
        path: the .onnx file (replaced atomically; weights over 1.8 GB go to
            ``{name}.data`` beside it).
        target: "ort", or "tensorrt" / "openvino" (standard DequantizeLinear, as with opset 21).
        opset: None (ONNX Runtime's com.microsoft weight-only ops) or 21..23 (standard
            DequantizeLinear with block_size + MatMul / Gather).
        verify: onnx.checker, then ORT vs PyTorch (greedy tokens, perplexity, logits SQNR).
    """
    standard = _check_opset(opset, target)
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder: pass the .onnx file to write")
    vocab = int(model.config.vocab_size)
    prompts = _prompts(example_inputs, vocab)
    model.eval()

    def build(level: int | None, target: Path) -> dict[str, int]:
        with torch.inference_mode():
            proto = build_decoder(
                model, opset=opset or 21, opset21_weights=standard, int8_cast=level is None
            )
        if level is not None:
            int8_accuracy_level(proto, level)
        _write(proto, target)
        return dict(collections.Counter(n.op_type for n in proto.graph.node))

    # accuracy_level stays unset unless the agreement check passes with it. ORT 1.32's CPU
    # MatMulNBits has a fast 8-bit kernel only at level 4 (int8 inputs): with verify, 8-bit
    # layers try it; where it disagrees (or without verify), 8-bit per-row layers are
    # written as Cast + MatMul + Mul (exact, fp32 GEMM speed; decoder_weights.cast_matmul).
    fast8 = verify and not standard and _has_int8_linear(model)
    verification = None
    with staged(path) as target:
        op_counts = build(4 if fast8 else None, target)
        if verify:
            try:
                verification = verify_decoder(model, target, prompts)
                note = "8-bit layers: MatMulNBits accuracy_level 4 (int8 inputs) agreed"
            except DecoderVerificationError as err:
                if not fast8:
                    raise
                logger.info("8-bit MatMulNBits at accuracy_level 4 disagree (%s)", err)
                op_counts = build(None, target)
                verification = verify_decoder(model, target, prompts)
                note = "8-bit layers: accuracy_level 4 disagreed, written as Cast+MatMul (exact)"
            if fast8:
                verification = dataclasses.replace(
                    verification, detail=f"{verification.detail}; {note}"
                )
        size = staged_bytes(target)
    return OnnxExportResult(
        path=path,
        kind="decoder",
        output_bytes=size,
        op_counts=op_counts,
        verification=verification,
        float_layers=_float_layers(model),
    )


__all__ = [
    "DecoderVerificationError",
    "export_decoder",
    "generate_greedy",
    "ort_perplexity",
    "verify_decoder",
]
