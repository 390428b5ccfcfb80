"""Post-training quantization in a few lines: dynamic int8, static int8 with calibration,
4-bit weight-only; inspect, compare, save and load. Run: python examples/ptq_workflows.py"""

import tempfile

import torch
from torch import nn

import lowbit
from lowbit.eval import model_nbytes, sqnr_db
from lowbit.kernels import explain

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
).eval()
calib = [torch.randn(64, 256) for _ in range(8)]  # use real samples of your data here
x = torch.randn(32, 256)

dynamic = lowbit.quantize(model, "int8-dynamic")  # no calibration needed
static = lowbit.quantize(model, "int8-static:percentile", calib_data=calib)
w4 = lowbit.quantize(model, "w4a16-g128")

with torch.no_grad():
    ref = model(x)
    for name, q in [("int8-dynamic", dynamic), ("int8-static", static), ("w4a16-g128", w4)]:
        print(
            f"{name:13s} SQNR {sqnr_db(ref, q(x)):5.1f} dB, "
            f"{model_nbytes(q) / model_nbytes(model):.3f}x the fp32 bytes"
        )

print(explain(dynamic))  # which kernel each layer runs, and why
for row in lowbit.describe(w4):
    print(row)

with tempfile.TemporaryDirectory() as tmp:
    lowbit.save(static, f"{tmp}/mlp-int8")
    skeleton = nn.Sequential(
        nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )
    loaded = lowbit.load(f"{tmp}/mlp-int8", skeleton)  # needs the float architecture
    with torch.no_grad():
        assert torch.equal(loaded(x), static(x))
    print("saved and loaded: bit-identical outputs")
