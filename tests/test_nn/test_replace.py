"""set_module: the one sub-module replacement recipes and lowbit.io share."""

from __future__ import annotations

from torch import nn

from lowbit.nn.replace import set_module


def test_set_module_replaces_a_nested_child_and_a_bare_model() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.ReLU())
    new = nn.Identity()
    assert set_module(model, "0.0", new) is model
    assert model[0][0] is new
    assert set_module(model, "", new) is new
