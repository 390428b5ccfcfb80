"""Quantization-aware training: prepare, train a little, convert to real int8 modules.
Run: python examples/qat_workflow.py"""

import torch
from torch import nn

import lowbit
from lowbit.kernels import explain

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1),
    nn.BatchNorm2d(8),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(8 * 4 * 4, 10),
).eval()
x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))

qat = lowbit.prepare_qat(model, "int8-qat", example_inputs=x[:64])  # folds BN, fuses ReLU
opt = torch.optim.SGD(qat.parameters(), lr=0.05)
for _ in range(20):  # your usual training loop
    opt.zero_grad()
    loss = nn.functional.cross_entropy(qat(x), y)
    loss.backward()  # straight-through estimator through the rounding
    opt.step()
print(f"QAT loss after training: {loss.item():.3f}")

int8 = lowbit.convert(qat.eval(), example_inputs=x[:64])
with torch.no_grad():
    agree = (int8(x).argmax(1) == qat(x).argmax(1)).float().mean().item()
print(f"int8 model agrees with the QAT model on {100 * agree:.1f}% of predictions")
print(explain(int8))  # real int8 kernels for every layer
