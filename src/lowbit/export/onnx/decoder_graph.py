"""The llama-family decoder as an ONNX graph with past key/values, built node by node from the
model's config and layers (not traced, so every batch size, sequence length, past length and
padding runs the same graph).

Inputs: ``input_ids`` int64 [batch, seq], ``attention_mask`` int64 [batch, past + seq]
(1 = token, 0 = padding; left padding works), ``position_ids`` int64 [batch, seq],
``past_key_values.{i}.key|value`` float32 [batch, kv_heads, past, head_dim].
Outputs: ``logits`` float32 [batch, seq, vocab], ``present.{i}.key|value``
[batch, kv_heads, past + seq, head_dim]. The names and the cache layout are those of
onnxruntime-genai's model builder and optimum's llama export.

Each block is transformers' LlamaDecoderLayer in standard ops (opset 21): RMSNorm as
Pow/ReduceMean/Add/Sqrt/Div/Mul (the pattern ORT fuses into SimplifiedLayerNormalization),
rotary embedding from cos/sin tables computed by the model's own rotary module and gathered
at ``position_ids``, grouped-query attention as two batched MatMuls over [batch, kv_heads,
group, seq, total] (the kv heads broadcast, no copies), a causal-and-padding mask applied with
Where, softmax in float32, SwiGLU MLP. Projections and embeddings are decoder_weights'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.errors import UnsupportedFormatError
from lowbit.export.onnx import decoder_weights
from lowbit.export.onnx.decoder_builder import GraphBuilder

SUPPORTED_MODEL_TYPES = ("llama",)


def decoder_config(model: nn.Module) -> dict[str, Any]:
    """The numbers the graph needs, read from ``model.config``; raises
    UnsupportedFormatError for models that are not llama-shaped."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedFormatError(
            f"the decoder exporter writes llama-family causal LMs ({SUPPORTED_MODEL_TYPES}), "
            f"this model is {model_type!r}; export another architecture with torch.onnx"
        )
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedFormatError(f"hidden_act {act!r}: the llama decoder graph uses silu")
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) == "dynamic":
        raise UnsupportedFormatError(
            "dynamic rope scaling changes the rotary tables with the sequence length; the "
            "exported graph holds fixed tables: export a model with static rope"
        )
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "layers": config.num_hidden_layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "eps": float(config.rms_norm_eps),
        "max_positions": int(config.max_position_embeddings),
        "vocab": int(config.vocab_size),
    }


def rotary_tables(model: nn.Module, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [positions, head_dim] as the model's own rotary module computes them
    (attention scaling of llama3/yarn rope types included)."""
    rotary = model.model.rotary_emb
    pos = torch.arange(positions).unsqueeze(0)
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.inference_mode():
        cos, sin = rotary(probe, pos)
    return cos[0].float().numpy(), sin[0].float().numpy()


class _Decoder:
    """Writes one decoder graph into a GraphBuilder."""

    def __init__(
        self, g: GraphBuilder, model: nn.Module, cfg: dict, *, opset21: bool, int8_cast: bool
    ) -> None:
        self.g, self.model, self.cfg, self.opset21 = g, model, cfg, opset21
        self.int8_cast = int8_cast

    def rms_norm(self, x: str, norm: nn.Module, name: str) -> str:
        g = self.g
        weight = g.const(f"{name}.weight", norm.weight.detach().float().numpy())
        eps = getattr(norm, "variance_epsilon", self.cfg["eps"])
        var = g.op("ReduceMean", [g.op("Pow", [x, self.two]), self.last_axis], keepdims=1)
        root = g.op("Sqrt", [g.op("Add", [var, g.const("eps", np.float32(eps))])])
        return g.op("Mul", [g.op("Div", [x, root]), weight], name)

    def linear(self, x: str, module: nn.Module, name: str) -> str:
        return decoder_weights.linear(
            self.g, x, module, name, opset21=self.opset21, int8_cast=self.int8_cast
        )

    def rope(self, x: str, cos: str, sin: str) -> str:
        g = self.g
        x1, x2 = g.op("Split", [x], outputs=2, axis=-1, num_outputs=2)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])

    def attention(self, x: str, attn: nn.Module, i: int, ctx: dict) -> str:
        g, cfg = self.g, self.cfg
        kv, hd = cfg["kv_heads"], cfg["head_dim"]
        group = cfg["heads"] // kv
        name = f"model.layers.{i}.self_attn"
        q = self.linear(x, attn.q_proj, f"{name}.q_proj")
        k = self.linear(x, attn.k_proj, f"{name}.k_proj")
        v = self.linear(x, attn.v_proj, f"{name}.v_proj")
        # q: [B, S, H·hd] -> [B, kv, group, S, hd]; head h = kv_head·group + j (repeat_kv)
        q = g.op("Reshape", [q, g.ints("q_shape", [0, 0, kv, group, hd])])
        q = g.op("Transpose", [q], perm=[0, 2, 3, 1, 4])
        k = g.op("Transpose", [g.op("Reshape", [k, ctx["kv_shape"]])], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [v, ctx["kv_shape"]])], perm=[0, 2, 1, 3])
        q = self.rope(q, ctx["cos5"], ctx["sin5"])
        k = self.rope(k, ctx["cos4"], ctx["sin4"])
        present_k = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        present_v = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        ctx["present"] += [present_k, present_v]
        keys = g.op(
            "Transpose", [g.op("Unsqueeze", [present_k, ctx["axis2"]])], perm=[0, 1, 2, 4, 3]
        )
        scores = g.op("MatMul", [q, keys])  # [B, kv, group, S, T]
        scale = getattr(attn, "scaling", hd**-0.5)
        scores = g.op("Mul", [scores, g.const("attn_scale", np.float32(scale))])
        scores = g.op("Where", [ctx["mask"], scores, ctx["masked"]])
        probs = g.op("Softmax", [scores], axis=-1)
        out = g.op("MatMul", [probs, g.op("Unsqueeze", [present_v, ctx["axis2"]])])
        out = g.op("Transpose", [out], perm=[0, 3, 1, 2, 4])  # [B, S, kv, group, hd]
        out = g.op("Reshape", [out, g.ints("merge_heads", [0, 0, -1])])
        return self.linear(out, attn.o_proj, f"{name}.o_proj")

    def mlp(self, x: str, mlp: nn.Module, i: int) -> str:
        g, name = self.g, f"model.layers.{i}.mlp"
        gate = self.linear(x, mlp.gate_proj, f"{name}.gate_proj")
        up = self.linear(x, mlp.up_proj, f"{name}.up_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        return self.linear(g.op("Mul", [act, up]), mlp.down_proj, f"{name}.down_proj")

    def masks_and_tables(self) -> dict:
        """The causal-and-padding mask [B, 1, 1, S, T] and the gathered cos/sin."""
        g = self.g
        ctx: dict = {"present": []}

        def dim(value: str, axis: int) -> str:
            return g.op("Squeeze", [g.op("Shape", [value], start=axis, end=axis + 1)])

        past = dim("past_key_values.0.key", 2)
        seq = dim("input_ids", 1)
        total = dim("attention_mask", 1)
        one, zero = g.const("one", np.int64(1)), g.const("zero", np.int64(0))
        q_pos = g.op("Range", [past, g.op("Add", [past, seq]), one])  # [S]
        k_pos = g.op("Range", [zero, total, one])  # [T]
        axis0, axis1 = g.ints("axis0", [0]), g.ints("axis1", [1])
        causal = g.op(
            "LessOrEqual", [g.op("Unsqueeze", [k_pos, axis0]), g.op("Unsqueeze", [q_pos, axis1])]
        )  # [S, T]
        keep = g.op("Cast", ["attention_mask"], to=self.g.onnx.TensorProto.BOOL)  # [B, T]
        mask = g.op("And", [causal, g.op("Unsqueeze", [keep, axis1])])  # [B, S, T]
        ctx["mask"] = g.op("Unsqueeze", [mask, g.ints("axes12", [1, 2])], "attention_mask_5d")
        ctx["masked"] = g.const("masked_score", np.float32(np.finfo(np.float32).min))
        cos, sin = rotary_tables(self.model, self.cfg["max_positions"])
        for key, table in (("cos", cos), ("sin", sin)):
            rows = g.op("Gather", [g.const(f"{key}_cache", table), "position_ids"])  # [B, S, hd]
            ctx[f"{key}4"] = g.op("Unsqueeze", [rows, axis1])
            ctx[f"{key}5"] = g.op("Unsqueeze", [rows, g.ints("axes12", [1, 2])])
        ctx["kv_shape"] = g.ints("kv_shape", [0, 0, self.cfg["kv_heads"], self.cfg["head_dim"]])
        ctx["axis2"] = g.ints("axis2", [2])
        return ctx

    def build(self) -> tuple[str, list[str]]:
        """Writes the whole graph; returns the logits name and the present names."""
        g, m = self.g, self.model
        self.two = g.const("two", np.float32(2.0))
        self.last_axis = g.ints("last_axis", [-1])
        ctx = self.masks_and_tables()
        h = decoder_weights.embedding(
            g, "input_ids", m.model.embed_tokens, "model.embed_tokens", opset21=self.opset21
        )
        for i, layer in enumerate(m.model.layers):
            x = self.rms_norm(h, layer.input_layernorm, f"model.layers.{i}.input_layernorm")
            h = g.op("Add", [h, self.attention(x, layer.self_attn, i, ctx)])
            x = self.rms_norm(
                h, layer.post_attention_layernorm, f"model.layers.{i}.post_attention_layernorm"
            )
            h = g.op("Add", [h, self.mlp(x, layer.mlp, i)])
        h = self.rms_norm(h, m.model.norm, "model.norm")
        logits = self.linear(h, m.lm_head, "lm_head")
        return g.op("Identity", [logits], "logits"), ctx["present"]


def build_decoder(
    model: nn.Module, *, opset: int = 21, opset21_weights: bool = False, int8_cast: bool = False
) -> Any:
    """The decoder ModelProto of ``model`` (a transformers LlamaForCausalLM, float or with
    lowbit's QuantLinear/QuantEmbedding layers). ``opset21_weights``: quantized layers as
    standard DequantizeLinear instead of com.microsoft MatMulNBits/GatherBlockQuantized;
    ``int8_cast``: 8-bit per-row layers as Cast + MatMul + Mul (decoder_weights.cast_matmul)."""
    cfg = decoder_config(model)
    g = GraphBuilder()
    helper, tp = g.onnx.helper, g.onnx.TensorProto
    for name in ("input_ids", "attention_mask", "position_ids"):
        g.name(name)
    cache = ["batch", cfg["kv_heads"], "past_sequence_length", cfg["head_dim"]]
    inputs = [
        helper.make_tensor_value_info("input_ids", tp.INT64, ["batch", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", tp.INT64, ["batch", "total_sequence_length"]
        ),
        helper.make_tensor_value_info("position_ids", tp.INT64, ["batch", "sequence_length"]),
    ]
    for i in range(cfg["layers"]):
        for kind in ("key", "value"):
            g.name(f"past_key_values.{i}.{kind}")
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", tp.FLOAT, cache)
            )
    logits, present = _Decoder(g, model, cfg, opset21=opset21_weights, int8_cast=int8_cast).build()
    out_cache = ["batch", cfg["kv_heads"], "total_sequence_length", cfg["head_dim"]]
    outputs = [
        helper.make_tensor_value_info(logits, tp.FLOAT, ["batch", "sequence_length", cfg["vocab"]])
    ]
    outputs += [helper.make_tensor_value_info(p, tp.FLOAT, out_cache) for p in present]
    return g.model(inputs, outputs, opset=opset, name="lowbit_decoder")
