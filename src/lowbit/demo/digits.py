"""Real data and a real (small) model for the demo: sklearn's 1797 handwritten 8x8 digits and
a tutorial-style CNN (2 conv + pooling + 2 fully connected, ReLU), trained with a fixed seed
in a few seconds."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import require

log = logging.getLogger(__name__)

TEST_SIZE = 360  # 20% of 1797; the same split as shared/anchors.md
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Train/test tensors: images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split() -> DigitsSplit:
    """sklearn's digits, split 1437/360 stratified with a fixed seed."""
    datasets = require("sklearn.datasets", "demo")
    model_selection = require("sklearn.model_selection", "demo")
    data = datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = model_selection.train_test_split(
        range(len(y)), test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=data.target
    )
    return DigitsSplit(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


class DigitsCNN(nn.Module):
    """conv(1→16) BN ReLU pool, conv(16→32) BN ReLU pool, fc(128→128) ReLU, fc(128→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 15,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Train in place with Adam and a fixed shuffle seed; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        log.debug("epoch %d loss %.4f", epoch, total / len(y))
    return model.eval()


def trained_digits_cnn(split: DigitsSplit, seed: int = 0) -> nn.Module:
    """A DigitsCNN trained on the split's training part (deterministic for a seed)."""
    torch.manual_seed(seed)
    return train(DigitsCNN(), split.x_train, split.y_train, seed=seed)
