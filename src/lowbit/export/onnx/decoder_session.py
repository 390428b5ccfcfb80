"""Running an exported decoder graph in ONNX Runtime: greedy generation with the KV cache,
and perplexity by lowbit's own protocol (lowbit.eval.perplexity on the ORT logits), so an
ONNX file is scored exactly as lowbit scores the PyTorch model."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import InvalidInputError
from lowbit.eval.perplexity import PerplexityResult, perplexity
from lowbit.export.onnx.runtime import require_onnxruntime

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")


def decoder_ort_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ORT CPU session of a decoder file, all graph optimizations on, ``threads`` intra-op
    threads. ORT fuses DequantizeLinear + MatMul (the opset-21 graph) into MatMulNBits with
    accuracy_level 4 by default, i.e. int8 activations (44 dB against the float32 result
    on tiny llama); "session.qdq_matmulnbits_accuracy_level" = 0 keeps the float
    activations that lowbit's weight-only layers have (it does not touch MatMulNBits nodes
    written as such). See onnxruntime_session_options_config_keys.h."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class DecoderSession:
    """An ONNX Runtime session of a decoder graph (decoder_graph's inputs and outputs).

    Args:
        path_or_session: the .onnx file, or an onnxruntime.InferenceSession of one.
        threads: intra-op threads for a session opened here (default: ORT's).
    """

    def __init__(self, path_or_session: str | os.PathLike | Any, threads: int | None = None):
        if isinstance(path_or_session, (str, os.PathLike)):
            if not Path(path_or_session).is_file():
                raise InvalidInputError(f"{path_or_session} is not a file: pass an .onnx path")
            path_or_session = decoder_ort_session(path_or_session, threads)
        self.session = path_or_session
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask", "position_ids"} - set(inputs)
        past = sorted(
            (int(m[1]), m[2]) for name in inputs if (m := _PAST.fullmatch(name)) is not None
        )
        if missing or not past:
            raise InvalidInputError(
                "this ONNX graph is not a decoder with past key/values (inputs "
                f"{sorted(inputs)}); export a causal LM with lowbit.export_onnx"
            )
        self.layers = past[-1][0] + 1
        shape = inputs["past_key_values.0.key"].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past key/values for a first call."""
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return {
            f"past_key_values.{i}.{kind}": empty
            for i in range(self.layers)
            for kind in ("key", "value")
        }

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        past: dict[str, np.ndarray] | None = None,
        position_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward pass: logits [batch, seq, vocab] and the next call's past.

        ``attention_mask`` covers past + new tokens; ``position_ids`` default to the count of
        real tokens before each one (transformers' convention, so left padding works)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        if position_ids is None:
            positions = np.cumsum(attention_mask, axis=-1) - 1
            positions[attention_mask == 0] = 1
            position_ids = positions[:, -input_ids.shape[1] :]
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        feed["position_ids"] = np.asarray(position_ids, dtype=np.int64)
        feed.update(past)
        outputs = dict(zip(self.output_names, self.session.run(None, feed), strict=True))
        present = {
            f"past_key_values.{i}.{kind}": outputs[f"present.{i}.{kind}"]
            for i in range(self.layers)
            for kind in ("key", "value")
        }
        return outputs["logits"], present


def _session(path_or_session: Any, threads: int | None) -> DecoderSession:
    if isinstance(path_or_session, DecoderSession):
        return path_or_session
    return DecoderSession(path_or_session, threads)


def generate_greedy(
    path_or_session: str | os.PathLike | Any,
    input_ids: torch.Tensor | np.ndarray,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | np.ndarray | None = None,
    threads: int | None = None,
) -> torch.Tensor:
    """Greedy decoding with the KV cache in ONNX Runtime: the prompt in one call, then one
    token per call (argmax of the last logits; no stopping at EOS, like
    ``generate(do_sample=False, min_new_tokens=max_new_tokens)``).

    Args:
        path_or_session: the .onnx file, an InferenceSession or a DecoderSession.
        input_ids: int [batch, seq] prompt tokens (left-padded for a ragged batch).
        max_new_tokens: tokens to generate (>= 1).
        attention_mask: [batch, seq], 0 at padding (default: all ones).
        threads: intra-op threads for a session opened here.

    Returns:
        int64 tensor [batch, seq + max_new_tokens]: the prompt followed by the new tokens.
    """
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise InvalidInputError(
            f"input_ids must be [batch, seq] with seq >= 1, got shape {tuple(ids.shape)}"
        )
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    if mask.shape != ids.shape:
        raise InvalidInputError(
            f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}: "
            "give one mask entry per prompt token"
        )
    decoder = _session(path_or_session, threads)
    tokens = [ids]
    logits, past = decoder.run(ids, mask)
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens.append(token)
        if step == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones_like(token)], axis=1)
        logits, past = decoder.run(token, mask, past)
    return torch.from_numpy(np.concatenate(tokens, axis=1))


class OrtCausalLM(nn.Module):
    """A decoder graph seen as a causal LM module (ids [1, T] -> logits [1, T, vocab]), so
    lowbit.eval.perplexity scores it with the same windows and arithmetic as PyTorch."""

    def __init__(self, decoder: DecoderSession, max_positions: int | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        if max_positions is not None:
            self.config = type("Config", (), {"max_position_embeddings": max_positions})()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.cpu().numpy()
        logits, _ = self.decoder.run(ids, np.ones_like(ids))
        return torch.from_numpy(logits)


def ort_perplexity(
    path_or_session: str | os.PathLike | Any,
    tokens: Any,
    text: str | None = None,
    *,
    ctx: int = 512,
    stride: int = 512,
    max_tokens: int | None = None,
    threads: int | None = None,
) -> PerplexityResult:
    """Perplexity of the decoder graph, by ``lowbit.eval.perplexity.perplexity`` (same
    arguments: a tokenizer with ``text``, or token ids; ``ctx``, ``stride``, ``max_tokens``)."""
    model = OrtCausalLM(_session(path_or_session, threads))
    return perplexity(model, tokens, text, ctx=ctx, stride=stride, max_tokens=max_tokens)
