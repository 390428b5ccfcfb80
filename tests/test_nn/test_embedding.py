"""QuantEmbedding: int8 row gather equals the reference lookup; state round trip."""

from __future__ import annotations

import json

import torch
from torch import nn

from lowbit.algorithms import rtn_tensor
from lowbit.formats.granularity import PerAxis, PerGroup
from lowbit.formats.qtypes import IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.kernels import REFERENCE_NAME
from lowbit.nn import QuantEmbedding
from lowbit.tensors import IntPackedTensor


def _table(granularity=PerAxis(0), bits=8) -> tuple[nn.Embedding, IntPackedTensor]:
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12)
    return emb, rtn_tensor(emb.weight.detach(), WeightFormat(IntType(bits, True), granularity))


def test_int8_rows_equal_the_dequantized_table() -> None:
    emb, weight = _table()
    module = QuantEmbedding.from_float(emb, weight)
    assert "int8 row gather" in module.kernel_name
    ids = torch.randint(0, 50, (3, 7))
    out = module(ids)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 12)
    assert torch.equal(out, weight.dequantize()[ids])
    reference = QuantEmbedding(weight, kernel=REFERENCE_NAME)
    assert torch.equal(reference(ids), out)


def test_other_formats_use_the_reference_and_round_trip() -> None:
    emb, weight = _table(PerGroup(4), bits=4)
    module = QuantEmbedding.from_float(emb, weight)
    assert module.kernel_name == REFERENCE_NAME
    tensors, meta = module.to_state()
    again = QuantEmbedding.from_state(tensors, json.loads(json.dumps(meta)))
    ids = torch.tensor([[0, 49, 3]])
    assert torch.equal(again(ids), module(ids))


def test_padding_idx_survives_the_state_round_trip() -> None:
    """Issue 12: from_state dropped padding_idx."""
    torch.manual_seed(0)
    emb = nn.Embedding(20, 8, padding_idx=3)
    weight = rtn_tensor(emb.weight.detach(), WeightFormat(IntType(8, True), PerAxis(0)))
    tensors, meta = QuantEmbedding.from_float(emb, weight).to_state()
    assert QuantEmbedding.from_state(tensors, json.loads(json.dumps(meta))).padding_idx == 3
    del meta["padding_idx"]  # a state written before padding_idx was saved: the default
    assert QuantEmbedding.from_state(tensors, meta).padding_idx is None
