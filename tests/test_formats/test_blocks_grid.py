"""The grid API of the GGUF block codecs (BlockCodec.grid / BlockGrid / with_codes): the
values a block's parameters allow, exactly as ggml dequantizes them."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats.blocks import BLOCK_TYPES, get_block_codec


def _raw(name: str, importance: bool) -> torch.Tensor:
    """ggml's bytes of a heavy-tailed weight (rows, nb, type_size), a zero row included."""
    codec = get_block_codec(name)
    g = torch.Generator().manual_seed(7)
    k = 2 * max(codec.block_size, 256)
    x = torch.randn(6, k, generator=g) * torch.rand(1, k, generator=g).pow(3) * 0.1
    x[2] = 0.0
    imp = torch.rand(k, generator=g) + 0.01 if importance else None
    return codec.quantize(x, imp).reshape(6, k // codec.block_size, codec.type_size)


@pytest.mark.parametrize("importance", [False, True])
@pytest.mark.parametrize("name", sorted(BLOCK_TYPES))
def test_grid_values_of_the_codes_are_the_dequantized_values(name, importance) -> None:
    codec = get_block_codec(name)
    raw = _raw(name, importance)
    grid = codec.grid(raw)
    codes = codec.decode(raw)[0]
    assert grid.scale.shape == grid.offset.shape == codes.shape
    deq = codec.dequantize(raw.reshape(raw.shape[0], -1), codes.shape[1] * codec.block_size)
    assert torch.equal(grid.values(codes).reshape(deq.shape), deq)
    assert bool((grid.levels[1:] > grid.levels[:-1]).all())  # ascending


@pytest.mark.parametrize("name", sorted(BLOCK_TYPES))
def test_with_codes_of_the_decoded_codes_gives_the_same_bytes(name) -> None:
    codec = get_block_codec(name)
    raw = _raw(name, importance=True)
    assert torch.equal(codec.with_codes(raw, codec.decode(raw)[0]), raw)


@pytest.mark.parametrize("name", sorted(BLOCK_TYPES))
def test_nearest_code_of_a_grid_value_is_its_code(name) -> None:
    codec = get_block_codec(name)
    raw = _raw(name, importance=False)
    grid = codec.grid(raw)
    codes = codec.decode(raw)[0].to(torch.int32)
    nearest = grid.nearest(grid.values(codes))
    live = grid.scale != 0  # a zero scale makes every code the same value
    assert bool(live.any())
    assert torch.equal(nearest[live], codes[live])
    assert torch.equal(grid.values(nearest), grid.values(codes))


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q3_k", "iq4_nl"])
def test_new_codes_land_on_the_grid_and_round_trip(name) -> None:
    """Rounding other values to the grid and writing them back keeps the parameters: the
    bytes dequantize to exactly the grid values chosen, each the nearest one."""
    codec = get_block_codec(name)
    raw = _raw(name, importance=False)
    grid = codec.grid(raw)
    target = grid.values(codec.decode(raw)[0]) + 0.3 * grid.scale * torch.randn(
        grid.scale.shape, generator=torch.Generator().manual_seed(1)
    )
    codes = grid.nearest(target)
    new = codec.with_codes(raw, codes)
    k = codes.shape[1] * codec.block_size
    deq = codec.dequantize(new.reshape(new.shape[0], -1), k).reshape(codes.shape)
    assert torch.equal(deq, grid.values(codes))
    assert torch.equal(codec.grid(new).scale, grid.scale)
    err = (deq - target).abs()
    for level in range(grid.levels.numel()):  # no other code is nearer
        other = grid.values(torch.full_like(codes, level + grid.code_min))
        assert bool(((other - target).abs() >= err - 1e-6 * grid.scale.abs()).all())


def test_nearest_rounds_halfway_up_and_a_zero_scale_to_the_level_nearest_zero() -> None:
    from lowbit.formats.blocks import BlockGrid

    levels = torch.arange(-8, 8, dtype=torch.float32)
    scale = torch.tensor([2.0, 2.0, -2.0, 0.0, 0.0])
    grid = BlockGrid(scale, torch.zeros(5), levels)
    x = torch.tensor([3.0, -3.0, 3.0, 5.0, -5.0])  # 1.5, -1.5, -1.5 level units; zero scale
    assert grid.nearest(x).tolist() == [2 + 8, -1 + 8, -1 + 8, 0 + 8, 0 + 8]
