"""lowbit.export_onnx for module trees: the graphs run in ONNX Runtime (and OpenVINO) with
lowbit's values, at any batch size, and fail loudly where they cannot."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InvalidInputError, MissingDependencyError, UnsupportedFormatError
from lowbit.export.onnx import export_onnx
from lowbit.export.onnx.runtime import openvino_runner
from lowbit.formats.sqnr import sqnr_db

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _ort_run(path, x: torch.Tensor) -> torch.Tensor:
    from lowbit.export.onnx.runtime import ort_session

    session = ort_session(path)
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _optimized_ops(path, tmp_path) -> set[str]:
    """The op types ORT runs after its graph optimizations (its QDQ fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


# ---------------------------------------------------------------- digits CNN, int8 static
@pytest.fixture(scope="module")
def digits():
    from lowbit.demo.digits import load_digits_split, trained_digits_cnn

    torch.manual_seed(0)
    split = load_digits_split()
    fp32 = trained_digits_cnn(split, seed=0)
    calib = list(split.x_train[:256].split(64))
    return split, lowbit.quantize(fp32, "int8-static", calib_data=calib)


@pytest.mark.slow
def test_digits_int8_static_is_qdq_fused_by_ort_and_as_accurate(digits, tmp_path):
    split, q = digits
    before = copy.deepcopy(q.state_dict())
    result = export_onnx(q, split.x_test[:16], tmp_path / "digits.onnx")
    assert result.verification.sqnr_db >= 30
    assert result.op_counts["QuantizeLinear"] >= 4 and result.op_counts["DequantizeLinear"] >= 8
    # int8 per-channel weights and uint8 activations, as lowbit stored them
    model = onnx.load(str(result.path))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["conv1.w_codes"] == onnx.TensorProto.INT8
    assert "QLinearConv" in _optimized_ops(result.path, tmp_path)
    # the user's model is untouched
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    # any batch size; accuracy on the whole test split within 0.5 points of lowbit's
    with torch.inference_mode():
        torch_pred = q(split.x_test).argmax(-1)
    ort_pred = _ort_run(result.path, split.x_test).argmax(-1)
    torch_acc = (torch_pred == split.y_test).float().mean().item() * 100
    ort_acc = (ort_pred == split.y_test).float().mean().item() * 100
    assert abs(ort_acc - torch_acc) <= 0.5, (ort_acc, torch_acc)
    one = _ort_run(result.path, split.x_test[:1])
    with torch.inference_mode():
        assert sqnr_db(q(split.x_test[:1]), one) >= 30


@pytest.mark.slow
def test_digits_qdq_runs_in_openvino_f32(digits, tmp_path):
    pytest.importorskip("openvino")
    split, q = digits
    result = export_onnx(q, split.x_test[:16], tmp_path / "digits.onnx")
    x = split.x_test[:64]
    out = torch.from_numpy(openvino_runner(result.path)(x))
    with torch.inference_mode():
        ref = q(x)
    assert sqnr_db(ref, out) >= 30
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.98


@pytest.mark.slow
def test_tensorrt_target_is_symmetric_int8(digits, tmp_path):
    split, q = digits
    result = export_onnx(q, split.x_test[:16], tmp_path / "trt.onnx", target="tensorrt")
    assert result.verification.sqnr_db >= 30
    model = onnx.load(str(result.path))
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update(
        {
            n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
            for n in model.graph.node
            if n.op_type == "Constant"
        }
    )
    zero_points = [values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype.name == "int8" and (z == 0).all() for z in zero_points)


@pytest.mark.slow
def test_a_graph_below_the_sqnr_floor_is_not_written(digits, tmp_path, monkeypatch):
    from lowbit.export.onnx import verify

    split, q = digits
    monkeypatch.setattr(verify, "MIN_SQNR_DB", 1000.0)
    monkeypatch.setattr(verify, "NOISE_MARGIN_DB", -1000.0)
    # ORT's int8 kernels can match lowbit's exactly (an infinite SQNR, seen on an Intel
    # Xeon): a last-digit difference keeps the SQNR finite, as on other CPUs
    run_ort = verify.run_ort
    monkeypatch.setattr(verify, "run_ort", lambda *a: [t + 1e-4 for t in run_ort(*a)])
    with pytest.raises(verify.ExportVerificationError, match="below the 1000 dB floor"):
        export_onnx(q, split.x_test[:8], tmp_path / "digits.onnx")
    assert list(tmp_path.iterdir()) == []


class ResidualCNN(nn.Module):
    """conv -> conv + skip (lowbit's Add, which static int8 makes a QuantAdd) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.add = lowbit.nn.Add(relu=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        y = self.add(self.conv2(y), y)
        return self.fc(self.pool(y).flatten(1))


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic"])
def test_residual_cnn_with_quantized_add(tmp_path, preset):
    torch.manual_seed(1)
    calib = [torch.randn(32, 3, 12, 12) for _ in range(4)]
    q = lowbit.quantize(ResidualCNN().eval(), preset, calib_data=calib)
    if preset == "int8-static":
        assert isinstance(q.add, lowbit.nn.QuantAdd)
    result = export_onnx(q, torch.randn(4, 3, 12, 12), tmp_path / "cnn.onnx")
    assert result.verification.sqnr_db >= 30
    expected = "QLinearConv" if preset == "int8-static" else "DynamicQuantizeLinear"
    fused = _optimized_ops(result.path, tmp_path)
    assert expected in fused or expected in result.op_counts, fused
    x = torch.randn(7, 3, 12, 12)
    with torch.inference_mode():
        assert sqnr_db(q(x), _ort_run(result.path, x)) >= 30


def test_large_models_use_one_external_data_file(tmp_path, monkeypatch):
    from lowbit.export.onnx import graph

    monkeypatch.setattr(graph, "EXTERNAL_DATA_BYTES", 0)
    q = lowbit.quantize(MLP().eval(), "w4a16-g32")
    result = export_onnx(q, torch.randn(2, 64), tmp_path / "mlp.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    assert result.output_bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert result.verification.sqnr_db >= 30
    assert (tmp_path / "mlp.onnx").stat().st_size < 20_000  # the weights are in the data file


# ---------------------------------------------------------------- small MLPs (fast)
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize(
    ("preset", "opset", "op"),
    [
        ("int8-dynamic", None, "DynamicQuantizeLinear"),
        ("w8a8-dynamic", None, "MatMulInteger"),
        ("w8a8-dynamic-sym", None, "MatMulInteger"),
        ("w4a16-g32", None, "MatMulNBits"),
        ("w4a16-g32-asym", None, "MatMulNBits"),
        ("w8a16", None, "MatMulNBits"),
        ("w4a16-g32", 21, "DequantizeLinear"),
        ("w4a16-g32-asym", 21, "DequantizeLinear"),
    ],
)
def test_mlp_presets_match_lowbit_at_any_shape(tmp_path, preset, opset, op):
    q = lowbit.quantize(MLP().eval(), preset)
    x = torch.randn(4, 7, 64)
    result = export_onnx(q, x, tmp_path / "mlp.onnx", opset=opset)
    assert result.op_counts.get(op, 0) >= 2, result.op_counts
    assert result.verification.sqnr_db >= 30
    for shape in ((1, 3, 64), (9, 20, 64)):  # other batch sizes and lengths
        y = torch.randn(*shape)
        with torch.inference_mode():
            assert sqnr_db(q(y), _ort_run(result.path, y)) >= 30
    pytest.importorskip("openvino")  # OpenVINO's CPU plugin runs the same file; per-token
    # graphs (a run-time per-axis QuantizeLinear, which it cannot load) as target="openvino"
    per_token = preset.startswith("w8a8")
    path = (
        export_onnx(q, x, tmp_path / "ov.onnx", opset=opset, target="openvino").path
        if per_token
        else result.path
    )
    with torch.inference_mode():
        assert sqnr_db(q(y), torch.from_numpy(openvino_runner(path)(y))) >= 30


@pytest.mark.parametrize("preset", ["w8a8-dynamic", "w8a8-dynamic-sym"])
def test_per_token_graphs_fuse_into_ort_integer_matmuls(tmp_path, preset):
    """ORT's target: one QuantizeLinear per input and the MatMulInteger chain that ORT fuses
    into MatMulIntegerToFloat; OpenVINO's: no QuantizeLinear, the same numbers."""
    import onnx
    import onnxruntime as ort

    q = lowbit.quantize(MLP().eval(), preset)
    x = torch.randn(3, 5, 64)
    fast = export_onnx(q, x, tmp_path / "ort.onnx")
    portable = export_onnx(q, x, tmp_path / "ov.onnx", target="openvino")
    assert fast.op_counts["QuantizeLinear"] == 2, fast.op_counts
    assert "QuantizeLinear" not in portable.op_counts, portable.op_counts
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(fast.path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("MatMulIntegerToFloat") == 2 and "MatMulInteger" not in fused, fused
    with torch.inference_mode():
        assert sqnr_db(_ort_run(fast.path, x), _ort_run(portable.path, x)) >= 60


def test_offset_form_weights_get_float_zero_points(tmp_path):
    from lowbit.formats.granularity import PerGroup
    from lowbit.recipes.spec import ActivationSpec, QuantSpec, Recipe, WeightSpec

    weight = WeightSpec("int4", PerGroup(32), symmetric=False, form="offset")
    q = lowbit.quantize(
        MLP().eval(), Recipe("offset", "ptq", QuantSpec(weight, ActivationSpec("weight_only")))
    )
    result = export_onnx(q, torch.randn(2, 5, 64), tmp_path / "mlp.onnx")
    assert result.op_counts["MatMulNBits"] == 2 and result.verification.sqnr_db >= 30
    types = {i.name: i.data_type for i in onnx.load(str(result.path)).graph.initializer}
    assert types["fc1.zero_points"] == onnx.TensorProto.FLOAT


def test_opset_21_is_standard_int4_blocked_dequantize(tmp_path):
    q = lowbit.quantize(MLP().eval(), "w4a16-g32")
    result = export_onnx(q, torch.randn(2, 5, 64), tmp_path / "mlp.onnx", opset=21)
    assert "MatMulNBits" not in result.op_counts
    model = onnx.load(str(result.path))
    blocks = [
        a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
        if a.name == "block_size"
    ]  # fmt: skip
    assert blocks == [32, 32]
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["fc1.codes_t"] == onnx.TensorProto.INT4  # two codes a byte, as stored
    assert "MatMulNBits" in _optimized_ops(result.path, tmp_path)  # ORT fuses it back
    pytest.importorskip("openvino")
    x = torch.randn(3, 4, 64)
    with torch.inference_mode():
        assert sqnr_db(q(x), torch.from_numpy(openvino_runner(result.path)(x))) >= 30


def test_unsupported_layers_are_named_with_skip(tmp_path):
    q = lowbit.quantize(MLP().eval(), "nf4")
    with pytest.raises(UnsupportedFormatError, match=r"fc1 \(MatMulNBits.*skip=\('fc1', 'fc2'\)"):
        export_onnx(q, torch.randn(2, 64), tmp_path / "mlp.onnx")
    assert list(tmp_path.iterdir()) == []
    result = export_onnx(q, torch.randn(2, 64), tmp_path / "mlp.onnx", skip=("fc*",))
    assert set(result.float_layers) >= {"fc1", "fc2"}
    assert result.verification.sqnr_db >= 30


def test_bad_opset_and_inputs_are_clear(tmp_path):
    q = lowbit.quantize(MLP().eval(), "int8-dynamic")
    with pytest.raises(InvalidInputError, match="opset 13 is not supported"):
        export_onnx(q, torch.randn(2, 64), tmp_path / "m.onnx", opset=13)
    with pytest.raises(InvalidInputError, match="example_inputs must be a tensor"):
        export_onnx(q, "hello", tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match="target 'tpu'"):
        export_onnx(q, torch.randn(2, 64), tmp_path / "m.onnx", target="tpu")


# ---------------------------------------------------------------- MiniLM, padded batches
@pytest.mark.slow
def test_minilm_w8a8_dynamic_on_padded_batches(tmp_path):
    from lowbit.eval.bundled import minilm_path
    from lowbit.eval.text import evaluation_text, text_chunks
    from lowbit.export.onnx.verify import run_ort
    from lowbit.io import load_model

    loaded = load_model(minilm_path())
    q = lowbit.quantize(loaded.model, "w8a8-dynamic")
    # 32 passages of 25 words, padded: MiniLM W8A8 sits near 30 dB against lowbit PyTorch,
    # where lowbit's own reference and fast kernels also differ (docs/decisions.md): below
    # 30 dB the check passes only within 2 dB of that, and says so
    passages = text_chunks(evaluation_text(), 32, words=25)
    batch = dict(loaded.tokenizer(passages, padding=True, return_tensors="pt"))
    result = export_onnx(q, batch, tmp_path / "minilm.onnx")
    check = result.verification
    assert check.sqnr_db >= 30 or "within lowbit's own kernel noise" in check.detail, check
    assert check.sqnr_db >= 27
    assert result.op_counts["MatMulInteger"] >= 36
    # another padded batch, of short sentences, another size and length
    sentences = text_chunks(evaluation_text(), 45, words=12)[::3]
    other = dict(loaded.tokenizer(sentences, padding=True, return_tensors="pt"))
    hidden = run_ort(result.path, other)[0]
    with torch.inference_mode():
        ref = q(**other).last_hidden_state
    mask = other["attention_mask"]
    weights = mask.unsqueeze(-1).float()

    def pooled(h: torch.Tensor) -> torch.Tensor:
        return (h * weights).sum(1) / weights.sum(1)

    cosine = torch.nn.functional.cosine_similarity(pooled(ref), pooled(hidden), dim=-1)
    assert cosine.min() >= 0.999, cosine
    # ~30 dB (29.9 measured): as close as lowbit's own two kernel sets are to each other
    from lowbit.export.onnx.verify import own_noise_db, tensor_leaves

    with torch.inference_mode():
        noise = own_noise_db(q, tensor_leaves(q(**other)), (), other)
    assert sqnr_db(ref[mask.bool()], hidden[mask.bool()]) >= min(30.0, noise - 1.0), noise


def test_missing_openvino_names_its_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"lowbit\[openvino\]"):
        openvino_runner(tmp_path / "m.onnx")


# ---------------------------------------------------------------- input transforms
def test_an_input_transform_exports_as_a_mul_and_a_float_gather(tmp_path):
    """int8-dynamic-smooth's layers: the multiply before DynamicQuantizeLinear (ORT still
    fuses the integer matmul) and the float outlier channels as Gather + MatMul + Add."""
    from lowbit.nn import QuantLinear
    from lowbit_testkit.kernel_helpers import int8_weight

    torch.manual_seed(0)
    scale = torch.rand(64) + 0.5
    scale[[3, 7]] = 0.0
    layer = QuantLinear(
        int8_weight(32, 64), torch.randn(32), mode="dynamic", input_scale=scale,
        outlier_channels=torch.tensor([3, 7]), outlier_weight=torch.randn(32, 2),
    )  # fmt: skip
    model = nn.Sequential(layer, nn.GELU()).eval()
    x = torch.randn(4, 7, 64)
    x[..., 3] *= 30
    result = export_onnx(model, x, tmp_path / "t.onnx")
    assert result.verification.sqnr_db >= 30, result.verification
    assert result.op_counts["Gather"] == 1 and result.op_counts["DynamicQuantizeLinear"] == 1
    assert "DynamicQuantizeMatMul" in _optimized_ops(result.path, tmp_path)
    for shape in ((1, 3, 64), (9, 20, 64)):
        y = torch.randn(*shape)
        y[..., 7] += 25
        with torch.inference_mode():
            assert sqnr_db(model(y), _ort_run(result.path, y)) >= 30


@pytest.mark.filterwarnings("ignore:calibration data holds only")
def test_int8_dynamic_smooth_bert_runs_in_ort_on_padded_batches(tmp_path):
    from lowbit_testkit.models import tiny_bert

    model = tiny_bert()
    gen = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, 128, (2, 16), generator=gen)} for _ in range(4)]
    q = lowbit.quantize(model, "int8-dynamic-smooth", calib_data=calib)
    ids = torch.randint(0, 128, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    result = export_onnx(q, batch, tmp_path / "bert.onnx")
    assert result.verification.sqnr_db >= 30, result.verification
    assert result.op_counts["DynamicQuantizeLinear"] >= 8
