"""Float Add and static QuantAdd."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.errors import InvalidInputError
from lowbit.kernels import REFERENCE_NAME, explain
from lowbit.nn import Add, QuantAdd
from lowbit_testkit.kernel_helpers import minmax_qparams


@pytest.mark.parametrize("relu", [False, True])
def test_float_add(relu: bool) -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    y = Add(relu=relu)(a, b)
    torch.testing.assert_close(y, torch.relu(a + b) if relu else a + b)


@pytest.mark.parametrize("relu", [False, True])
def test_quant_add_from_float_matches_reference(relu: bool) -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    kw = {
        "output_qparams": minmax_qparams(a + b),
        "input_qparams": minmax_qparams(a),
        "other_qparams": minmax_qparams(b),
    }
    m = QuantAdd.from_float(Add(relu=relu), **kw)
    assert m.spec.relu is relu and m.kernel_name == "int8 static (quantized.add)"
    ref = QuantAdd.from_float(Add(relu=relu), kernel=REFERENCE_NAME, **kw)
    step = float(kw["output_qparams"].scale)
    assert float((m(a, b) - ref(a, b)).abs().max()) <= step * 1.001
    q = QuantAdd(
        kw["output_qparams"],
        keep_quantized_output=True,
        **{k: v for k, v in kw.items() if k != "output_qparams"},
    )(a, b)
    assert q.dtype == torch.quint8
    assert explain(torch.nn.Sequential(m)).rows[0].op == "add"


def test_quant_add_state_and_errors() -> None:
    a, b = torch.randn(5), torch.randn(5)
    m = QuantAdd(minmax_qparams(a + b), input_qparams=minmax_qparams(a), relu=True)
    tensors, meta = m.to_state()
    assert tensors == {}
    m2 = QuantAdd.from_state(tensors, json.loads(json.dumps(meta)))
    with pytest.raises(InvalidInputError, match="second input"):
        m2(a, b)  # no qparams for the float second input
    with pytest.raises(InvalidInputError, match=r"lowbit\.nn\.Add"):
        QuantAdd.from_float(torch.nn.ReLU(), output_qparams=minmax_qparams(a))
