"""Flat-dict serialisation: granularity dicts, the kind registry, errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.algorithms import rtn_tensor
from lowbit.errors import InvalidInputError, UnsupportedFormatError
from lowbit.formats.granularity import PerAxis, PerGroup, PerTensor
from lowbit.formats.qtypes import FP8_E4M3, FP16, NF4, TERNARY, IntType
from lowbit.formats.weight_format import WeightFormat
from lowbit.tensors import (
    QTENSOR_KINDS,
    granularity_from_dict,
    granularity_to_dict,
    qtensor_from_dict,
)

W = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
ALL = [
    rtn_tensor(W, WeightFormat(IntType(4, False), PerGroup(8), symmetric=False)),
    rtn_tensor(W, WeightFormat(FP8_E4M3, PerTensor())),
    rtn_tensor(W, WeightFormat(FP16)),
    rtn_tensor(W, WeightFormat(NF4, PerGroup(64))),
    rtn_tensor(W, WeightFormat(TERNARY, PerTensor())),
]


@pytest.mark.parametrize("g", [PerTensor(), PerAxis(1), PerGroup(128), PerGroup(7, axis=0)])
def test_granularity_dict_round_trip(g):
    assert granularity_from_dict(json.loads(json.dumps(granularity_to_dict(g)))) == g


def test_bad_granularity_dicts():
    with pytest.raises(UnsupportedFormatError, match="per_block"):
        granularity_from_dict({"type": "per_block"})
    with pytest.raises(InvalidInputError, match="per_axis"):
        granularity_from_dict({"type": "per_axis", "size": 3})


def test_registry_covers_every_class():
    assert {type(qt) for qt in ALL} == set(QTENSOR_KINDS.values())
    assert all(QTENSOR_KINDS[cls.kind] is cls for cls in QTENSOR_KINDS.values())


@pytest.mark.parametrize("qt", ALL, ids=lambda qt: qt.kind)
def test_bad_metadata_and_missing_tensors(qt):
    tensors, meta = qt.to_dict("w.")
    with pytest.raises(UnsupportedFormatError, match="'int_packed_v9'"):
        qtensor_from_dict(tensors, {**meta, "kind": "int_packed_v9"}, "w.")
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        qtensor_from_dict(tensors, {**meta, "version": 99}, "w.")
    with pytest.raises(InvalidInputError, match="missing"):
        qtensor_from_dict(tensors, meta)  # wrong prefix: nothing found
    name = next(iter(tensors))
    with pytest.raises(InvalidInputError, match=repr(name)):
        qtensor_from_dict({k: v for k, v in tensors.items() if k != name}, meta, "w.")
    with pytest.raises(InvalidInputError, match="'shape'"):
        qtensor_from_dict(tensors, {k: v for k, v in meta.items() if k != "shape"}, "w.")
    with pytest.raises(InvalidInputError, match="shape"):
        qtensor_from_dict(tensors, {**meta, "shape": [4, 31]}, "w.")
    other = next(cls for cls in QTENSOR_KINDS.values() if cls is not type(qt))
    with pytest.raises(UnsupportedFormatError, match="qtensor_from_dict"):
        other.from_dict(tensors, meta, "w.")


def test_qtype_of_the_wrong_family_is_refused():
    tensors, meta = ALL[0].to_dict()
    with pytest.raises(UnsupportedFormatError, match="nf4"):
        qtensor_from_dict(tensors, {**meta, "qtype": "nf4"})
    with pytest.raises(UnsupportedFormatError, match="int13"):
        qtensor_from_dict(tensors, {**meta, "qtype": "int13"})


def test_truncated_packed_data():
    tensors, meta = ALL[3].to_dict()
    tensors["packed"] = tensors["packed"][:-1]
    with pytest.raises(InvalidInputError, match="packed"):
        qtensor_from_dict(tensors, meta)


def test_safetensors_round_trip():
    import safetensors.torch as st

    tensors, metadata = {}, {}
    for i, qt in enumerate(ALL):
        t, m = qt.to_dict(f"layer{i}.")
        tensors.update(t)
        metadata[f"layer{i}."] = json.dumps(m)
    loaded = st.load(st.save(tensors, metadata=metadata))
    for i, qt in enumerate(ALL):
        back = qtensor_from_dict(loaded, json.loads(metadata[f"layer{i}."]), f"layer{i}.")
        assert torch.equal(back.dequantize(), qt.dequantize())
