"""Shared check for tests/test_tensors: a QTensor survives to_dict -> JSON -> from_dict exactly."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from lowbit.tensors import QTensor, qtensor_from_dict


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor: torch.equal has no fp8 kernel, and bytes are stricter."""
    return t.reshape(-1).view(torch.uint8)


def _roundtrip(qt: QTensor, prefix: str = "layer.weight.") -> QTensor:
    tensors, meta = qt.to_dict(prefix)
    assert all(name.startswith(prefix) for name in tensors)
    meta = json.loads(json.dumps(meta))  # metadata must survive JSON unchanged
    back = qtensor_from_dict(tensors, meta, prefix)
    assert type(back) is type(qt)
    assert back.shape == qt.shape
    assert back.to_dict(prefix)[1] == meta
    for name, t in qt.tensors().items():
        assert back.tensors()[name].dtype == t.dtype
        assert torch.equal(_bits(back.tensors()[name]), _bits(t))
    assert back.tensors().keys() == qt.tensors().keys()
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert back.nbytes == qt.nbytes
    return back


@pytest.fixture
def roundtrip() -> Callable[..., QTensor]:
    """to_dict -> json dumps/loads of the metadata -> qtensor_from_dict, checked bit for bit."""
    return _roundtrip
