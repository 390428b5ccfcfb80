"""lowbit.export_tflite: lowbit's int8-static CNNs as .tflite files that ai-edge-litert's
interpreter runs with the values lowbit chose, agreeing with lowbit's PyTorch outputs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InvalidInputError, MissingDependencyError
from lowbit.eval.metrics import accuracy
from lowbit.export.tflite import export_tflite, run_tflite
from lowbit.formats.sqnr import sqnr_db
from lowbit.nn import Add
from lowbit.recipes import quantize


class ResidualCNN(nn.Module):
    """Every op the exporter writes: stride-2 conv whose padding is not TFLite's SAME at an
    even size (PAD), depthwise + pointwise convs, a residual lowbit Add with ReLU, a ReLU
    function, padded average pooling counting the zeros (PAD), padded max pooling (PADV2
    with the lowest value), adaptive pooling, torch.flatten through dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.add = Add(relu=True)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding="same")
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.add(x, self.pw(torch.relu(self.dw(x))))
        x = self.maxpool(torch.relu(self.conv3(self.pool(x))))
        return self.fc(self.drop(torch.flatten(self.gap(x), 1)))


class FlattenCNN(nn.Module):
    """conv -> flatten of a 4x4 map -> dropout -> (linear, or the flattened map itself as
    output)."""

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(64, 6) if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flat(self.conv(x))))


class ViewCNN(FlattenCNN):
    """The flatten written as x.reshape(x.size(0), -1) (x.view fails on lowbit's
    channels-last int8 conv output in PyTorch itself)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.reshape(y.size(0), -1))


def _static(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, *shape, generator=gen) for _ in range(4)]
    return quantize(model.eval(), "int8-static", calib_data=calib)


def _read_model(path):
    from ai_edge_litert import schema_py_generated as fb

    return fb.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    return _static(ResidualCNN(), (3, 16, 16))


def test_every_op_runs_in_litert_and_matches_lowbit(residual, tmp_path):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    result = lowbit.export_tflite(residual, x, tmp_path / "net.tflite")
    ops = result.op_counts
    for op in ("PAD", "PADV2", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D",
               "MAX_POOL_2D", "FULLY_CONNECTED", "RESHAPE", "QUANTIZE", "DEQUANTIZE"):  # fmt: skip
        assert ops.get(op, 0) >= 1, (op, ops)
    assert result.output_bytes == result.path.stat().st_size
    assert result.verification is not None and result.verification.sqnr_db >= 30
    # another batch size than the example's: the input is resized
    x3 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = residual(x3)
    assert sqnr_db(expected, run_tflite(result.path, x3)) >= 30


def test_the_file_holds_lowbit_codes_scales_and_zero_points(residual, tmp_path):
    path = export_tflite(residual, torch.rand(2, 3, 16, 16), tmp_path / "n.tflite").path
    tensors = {t.name.decode(): t for t in _read_model(path).subgraphs[0].tensors}
    buffers = _read_model(path).buffers
    for name, perm, axis in (("stem", (0, 2, 3, 1), 0), ("dw", (1, 2, 3, 0), 3)):
        m = getattr(residual, name)
        t = tensors[f"{name}/weight"]
        codes = np.frombuffer(bytes(buffers[t.buffer].data), dtype=np.int8).reshape(t.shape)
        assert np.array_equal(codes, m.weight.codes().permute(*perm).numpy())
        assert t.quantization.quantizedDimension == axis
        assert np.array_equal(t.quantization.scale, m.weight.scale.reshape(-1).numpy())
        assert not np.any(t.quantization.zeroPoint)
        out = tensors[name].quantization  # uint8 grid -> int8 grid: zero point - 128
        assert out.scale[0] == np.float32(m.spec.output_qparams.scale)
        assert out.zeroPoint[0] == int(m.spec.output_qparams.zero_point) - 128
    stem_in = tensors["stem/quantize"].quantization
    assert stem_in.zeroPoint[0] == int(residual.stem.spec.input_qparams.zero_point) - 128


@pytest.mark.parametrize(("head", "transposes"), [(True, 1), (False, 3)])
def test_flatten_of_nhwc_data_keeps_pytorch_order(head, transposes, tmp_path):
    torch.manual_seed(0)
    model = _static(FlattenCNN(head), (2, 4, 4))
    result = export_tflite(model, torch.randn(4, 2, 4, 4), tmp_path / "f.tflite")
    # a Linear after the flatten gets permuted columns (only the input TRANSPOSE); a flatten
    # that is the output goes back to NCHW first (input, before RESHAPE)
    assert result.op_counts["TRANSPOSE"] == transposes - (0 if head else 1)
    assert result.verification.sqnr_db >= 30


def test_reshape_to_batch_by_rest_is_a_flatten(tmp_path):
    model = _static(ViewCNN(head=True), (2, 4, 4))
    result = export_tflite(model, torch.randn(4, 2, 4, 4), tmp_path / "v.tflite")
    assert result.op_counts["RESHAPE"] == 1
    assert result.verification.sqnr_db >= 30


def test_the_callers_model_is_left_in_training_mode(tmp_path):
    model = _static(ResidualCNN(), (3, 16, 16)).train()  # dropout on: the file has it off
    result = export_tflite(model, torch.randn(2, 3, 16, 16), tmp_path / "r.tflite")
    assert result.verification.sqnr_db >= 30
    assert all(m.training for m in model.modules())


def test_a_float_layer_is_named(tmp_path):
    model = FlattenCNN(head=True).eval()
    with pytest.raises(InvalidInputError, match=r"layer 'conv' is a float Conv2d.*int8-static"):
        export_tflite(model, torch.randn(1, 2, 4, 4), tmp_path / "f.tflite")


def test_a_dynamic_layer_is_named(tmp_path):
    model = quantize(FlattenCNN(head=True).eval(), "int8-dynamic")
    with pytest.raises(InvalidInputError, match="layer 'conv' is a QuantConv2d in mode 'dynamic'"):
        export_tflite(model, torch.randn(1, 2, 4, 4), tmp_path / "f.tflite")


class WithSigmoid(FlattenCNN):
    def __init__(self) -> None:
        super().__init__(head=True)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.act(self.conv(x))))


class WithFloatAdd(FlattenCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(self.flat(y + y))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (WithSigmoid(), r"'act' \(module Sigmoid\) cannot be written as .tflite"),
        (WithFloatAdd(head=True), r"a float '\+'.*lowbit.nn.Add"),
    ],
)
def test_an_unsupported_op_is_named_and_the_old_file_stays(model, message, tmp_path):
    static = _static(model, (2, 4, 4))
    out = tmp_path / "m.tflite"
    out.write_bytes(b"previous")
    with pytest.raises(InvalidInputError, match=message):
        export_tflite(static, torch.randn(1, 2, 4, 4), out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_a_failed_verification_writes_nothing(monkeypatch, tmp_path):
    model = _static(FlattenCNN(head=True), (2, 4, 4))

    def broken(*args, **kwargs):
        raise RuntimeError("interpreter failed")

    monkeypatch.setattr("lowbit.export.tflite.api.run_tflite", broken)
    with pytest.raises(RuntimeError, match="interpreter failed"):
        export_tflite(model, torch.randn(1, 2, 4, 4), tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_extra_is_one_line(monkeypatch, tmp_path):
    model = _static(FlattenCNN(head=True), (2, 4, 4))
    for name in [n for n in sys.modules if n.startswith("ai_edge_litert")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(MissingDependencyError, match=r"lowbit\[litert\]") as info:
        export_tflite(model, torch.randn(1, 2, 4, 4), tmp_path / "m.tflite")
    assert len(str(info.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_digits_tflite_accuracy_is_lowbits(tmp_path):
    """Acceptance (issue 14): the digits CNN as int8 .tflite is within 0.5 points of lowbit's
    int8 accuracy on the 360 test images."""
    from lowbit.demo.digits import load_digits_split, trained_digits_cnn

    split = load_digits_split()
    fp32 = trained_digits_cnn(split)
    picks = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    model = quantize(fp32, "int8-static", calib_data=list(split.x_train[picks[:512]].split(64)))
    result = export_tflite(model, split.x_test[:64], tmp_path / "digits.tflite")
    lowbit_acc = accuracy(model, split.x_test, split.y_test)
    litert_acc = accuracy(lambda x: run_tflite(result.path, x), split.x_test, split.y_test)
    print(f"digits int8 test accuracy: lowbit {lowbit_acc:.2f}%, LiteRT {litert_acc:.2f}%, "
          f"{result.verification.detail}")  # fmt: skip
    assert abs(litert_acc - lowbit_acc) <= 0.5
    assert result.verification.sqnr_db >= 30
