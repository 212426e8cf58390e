"""FractalNet: fractal structure, join, drop-path rules, single-column inference, exact sizes.

Rule checks use a narrow network (8 channels per block) at 32x32 so that each forward costs a few
milliseconds; parameter counts at full width are measured on the meta device.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import resnexus
from resnexus.models.fractalnet import FractalBlock, FractalNet, fractal_join
from tests.helpers import max_abs_diff, randomize_

NARROW = (8, 8, 8, 8, 8)


def _narrow(name: str = "fractalnet20", seed: int = 0, **overrides: Any) -> FractalNet:
    torch.manual_seed(seed)
    overrides = {"dropout": 0.0, **overrides}  # dropout off unless a test wants it: exact comparisons
    model = resnexus.models.create_model(name, num_classes=10, channels=NARROW, **overrides)
    return randomize_(model, seed)


def _bn_eval(model: nn.Module) -> None:
    """Running BN statistics with the model otherwise in training mode (drop-path stays on)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _input(batch: int = 2, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def fractal_params(columns: int, widths: tuple[int, ...], in_chans: int = 3, num_classes: int = 10) -> int:
    """Hand count: per block C convs read the block input, 2^C-1-C read the block width; no conv
    bias; BN has 2 per channel per conv; linear classifier with bias."""
    total, c_in = 0, in_chans
    for w in widths:
        total += 9 * w * (columns * c_in + (2**columns - 1 - columns) * w)
        total += 2 * w * (2**columns - 1)
        c_in = w
    return total + widths[-1] * num_classes + num_classes


# -- structure and sizes --------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, columns, expected",
    [("fractalnet20", 3, 33_724_618), ("fractalnet40", 4, 76_106_634)],
)
def test_param_count_exact(name: str, columns: int, expected: int) -> None:
    widths = (64, 128, 256, 512, 512)
    assert fractal_params(columns, widths) == expected
    entry = resnexus.models.get_entry(name)
    with torch.device("meta"):
        model = entry.builder(num_classes=10, **entry.config)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert resnexus.models.model_info(name).params == expected


@pytest.mark.parametrize("name, columns", [("fractalnet20", 3), ("fractalnet40", 4)])
def test_column_layout_and_depth(name: str, columns: int) -> None:
    entry = resnexus.models.get_entry(name)
    with torch.device("meta"):
        model = entry.builder(num_classes=10, **entry.config)
    for block in model.blocks:
        assert [len(col) for col in block.columns] == [2**c for c in range(columns)]
    # the longest path: blocks x 2^(C-1) convs
    assert sum(len(b.columns[-1]) for b in model.blocks) == {3: 20, 4: 40}[columns]
    assert entry.input_size == (3, 32, 32)
    assert entry.mean == resnexus.models.registry.CIFAR_MEAN
    assert entry.config["dropout"] == (0.0, 0.1, 0.2, 0.3, 0.4)


def test_join_positions() -> None:
    # f_3: columns 2 and 3 meet halfway, all three at the end; f_4 recursively likewise.
    assert FractalBlock(3, 4, 3).joins == ((2, 3), (1, 2, 3))
    assert FractalBlock(3, 4, 4).joins == ((3, 4), (2, 3, 4), (3, 4), (1, 2, 3, 4))
    assert FractalBlock(3, 4, 1).joins == ()


def test_join_is_mean() -> None:
    a, b, c = torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 2, 2), 2.0), torch.full((1, 2, 2, 2), 6.0)
    assert torch.equal(fractal_join([a, b, c]), torch.full((1, 2, 2, 2), 3.0))
    assert torch.equal(fractal_join([a, c]), torch.full((1, 2, 2, 2), 3.5))
    assert torch.equal(fractal_join([b]), b)


def _recursive_block(x: Tensor, block: FractalBlock) -> Tensor:
    """Independent reference: f_{C}(z) = join(f_{C-1}(f_{C-1}(z)), conv(z)), joins at one depth merged.

    ``branches`` returns the un-joined inputs of a sub-fractal's final join, so the merged join of
    the enclosing fractal averages all of them at once.
    """

    def branches(z: Tensor, cols: list[list[nn.Module]]) -> list[Tensor]:
        if len(cols) == 1:
            return [cols[0][0](z)]
        deeper = cols[1:]
        first = [c[: len(c) // 2] for c in deeper]
        second = [c[len(c) // 2 :] for c in deeper]
        mid = fractal_join(branches(z, first))
        return [*branches(mid, second), cols[0][0](z)]

    cols = [list(col) for col in block.columns]
    return block.pool(fractal_join(branches(x, cols)))


@pytest.mark.parametrize("name", ["fractalnet20", "fractalnet40"])
def test_flattened_view_matches_recursive_expansion(name: str) -> None:
    model = _narrow(name).eval()
    x = _input()
    with torch.no_grad():
        stages = model.forward_stages(x)
        ref = x
        for block, out in zip(model.blocks, stages):
            ref = _recursive_block(ref, block)
            assert max_abs_diff(out, ref) < 1e-5


def test_output_shapes_and_stages() -> None:
    model = _narrow().eval()
    x = _input()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        stages = model.forward_stages(x)
        assert model.forward_features(x).shape == (2, 8, 1, 1)
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 16, 32]
    for info, s in zip(model.feature_info, stages):
        assert s.shape == (2, info.channels, 32 // info.stride, 32 // info.stride)
        assert model.get_submodule(info.module) is model.blocks[int(info.module.split(".")[1])]
    assert resnexus.models.get_entry("fractalnet20").reference.dataset == "CIFAR-10"


def test_features_only_extractor() -> None:
    torch.manual_seed(0)
    ext = resnexus.models.create_model("fractalnet20", channels=NARROW, features_only=True, out_indices=(1, -1))
    ext.eval()
    with torch.no_grad():
        outs = ext(_input(1))
    assert [o.shape[-1] for o in outs] == [8, 1]
    assert ext.strides == [4, 32]


# -- inference modes ------------------------------------------------------------------------
def test_eval_is_deterministic_and_uses_no_drop_path() -> None:
    model = _narrow(dropout=(0.0, 0.1, 0.2, 0.3, 0.4)).eval()
    x = _input()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert model.last_drop_path is None


@pytest.mark.parametrize("name, column", [("fractalnet20", 1), ("fractalnet20", 3), ("fractalnet40", 2)])
def test_single_column_equals_hand_built_chain(name: str, column: int) -> None:
    model = _narrow(name).eval()
    layers: list[nn.Module] = []
    for block in model.blocks:
        layers.extend(block.columns[column - 1])  # column 1: one conv per block; column c: 2^(c-1)
        layers.append(nn.MaxPool2d(2))
    chain = nn.Sequential(*layers, nn.Flatten(1), model.fc)
    x = _input()
    with torch.no_grad():
        expected = chain(x)
        assert torch.equal(model(x, column=column), expected)
        model.eval_column = column
        assert torch.equal(model(x), expected)
        model.eval_column = None
        assert not torch.equal(model(x), expected)
    assert len(layers) == 5 * (2 ** (column - 1) + 1)


def test_bad_column_rejected() -> None:
    model = _narrow().eval()
    with pytest.raises(ValueError):
        model(_input(1), column=4)
    with pytest.raises(ValueError):
        model(_input(1), column=0)


def test_train_without_drop_path_equals_eval_path() -> None:
    # p = 0 and no global draws: every join keeps every input, as in eval. BN is put on running
    # statistics (the only other train/eval difference with dropout 0) to compare exactly.
    model = _narrow(local_drop_prob=0.0, global_drop_ratio=0.0)
    x = _input()
    with torch.no_grad():
        expected = model.eval()(x)
        model.train()
        _bn_eval(model)
        got = model(x)
    assert model.last_drop_path is not None and model.last_drop_path.mode == "local"
    for block, keep in zip(model.blocks, model.last_drop_path.keep):
        assert keep == block.joins
    assert max_abs_diff(got, expected) < 1e-6


# -- drop-path sampling rules ---------------------------------------------------------------
def test_local_drop_path_rules_and_rate() -> None:
    model = _narrow(global_drop_ratio=0.0)  # local only
    p = model.local_drop_prob
    assert p == 0.15
    torch.manual_seed(123)
    inputs = dropped = 0
    expected_dropped = 0.0
    forced = 0
    for _ in range(2000):
        plan = model.sample_drop_path()
        assert plan.mode == "local" and plan.column is None
        for block, keep in zip(model.blocks, plan.keep):
            for join_inputs, kept in zip(block.joins, keep):
                n = len(join_inputs)
                assert 1 <= len(kept) <= n  # every join keeps at least one input
                assert set(kept) <= set(join_inputs)
                inputs += n
                dropped += n - len(kept)
                # each input dropped with p, minus the one restored when all n were dropped
                expected_dropped += n * p - p**n
                forced += len(kept) == 1
    rate, expected_rate = dropped / inputs, expected_dropped / inputs
    # one 2-input and one 3-input join per block: (0.3 - 0.15^2 + 0.45 - 0.15^3) / 5 = 0.144825
    assert abs(expected_rate - 0.144825) < 1e-9
    assert abs(rate - expected_rate) < 0.01, (rate, expected_rate)
    assert forced > 0


def test_local_keep_all_dropped_restores_one() -> None:
    model = _narrow(local_drop_prob=1.0, global_drop_ratio=0.0)
    torch.manual_seed(0)
    seen: set[int] = set()
    for _ in range(200):
        plan = model.sample_drop_path()
        for block, keep in zip(model.blocks, plan.keep):
            for join_inputs, kept in zip(block.joins, keep):
                assert len(kept) == 1 and kept[0] in join_inputs
                if len(join_inputs) == 3:
                    seen.add(kept[0])
    assert seen == {1, 2, 3}  # the survivor is chosen at random, not always the same input


def test_global_local_mix_is_half_and_columns_uniform() -> None:
    model = _narrow()
    assert model.global_drop_ratio == 0.5
    torch.manual_seed(7)
    plans = [model.sample_drop_path() for _ in range(2000)]
    globals_ = [p for p in plans if p.mode == "global"]
    assert abs(len(globals_) / len(plans) - 0.5) < 0.04
    assert all(p.mode == "local" for p in plans if p.mode != "global")
    counts = [sum(p.column == k for p in globals_) for k in (1, 2, 3)]
    assert min(counts) > len(globals_) / 3 * 0.8, counts


def test_global_mode_runs_exactly_one_column_per_block() -> None:
    model = _narrow(global_drop_ratio=1.0).train()
    calls: dict[tuple[int, int], int] = {}
    for b, block in enumerate(model.blocks):
        for c, col in enumerate(block.columns, start=1):
            for unit in col:
                unit.register_forward_hook(lambda m, i, o, key=(b, c): calls.__setitem__(key, calls.get(key, 0) + 1))
    torch.manual_seed(3)
    seen = set()
    for _ in range(6):
        calls.clear()
        model(_input())
        plan = model.last_drop_path
        assert plan is not None and plan.mode == "global"
        k = plan.column
        seen.add(k)
        for b, block in enumerate(model.blocks):
            active = {c for (bb, c) in calls if bb == b}
            assert active == {k}  # one column in every block, the same one
            assert calls[(b, k)] == len(block.columns[k - 1])  # the whole column, each conv once
    assert len(seen) > 1


def test_global_mode_gradients_reach_only_the_active_column() -> None:
    model = _narrow(global_drop_ratio=1.0).train()
    torch.manual_seed(11)
    model(_input()).square().sum().backward()
    k = model.last_drop_path.column
    for block in model.blocks:
        for c, col in enumerate(block.columns, start=1):
            for p in col.parameters():
                if c == k:
                    assert p.grad is not None and p.grad.abs().sum() > 0
                else:
                    assert p.grad is None
    assert model.fc.weight.grad is not None


def test_forward_applies_the_sampled_local_plan() -> None:
    model = _narrow(local_drop_prob=0.5, global_drop_ratio=0.0)
    x = _input()
    model.train()
    _bn_eval(model)  # deterministic apart from the drop-path draw (dropout is 0 here)
    torch.manual_seed(5)
    with torch.no_grad():
        got = model(x)
        plan = model.last_drop_path
        assert plan.mode == "local"
        assert any(k != j for keep, b in zip(plan.keep, model.blocks) for k, j in zip(keep, b.joins))
        ref = x
        for block, keep in zip(model.blocks, plan.keep):
            ref = block(ref, keep=keep)
        ref = model.fc(torch.flatten(ref, 1))
    assert torch.equal(got, ref)


def test_keep_masks_select_join_inputs() -> None:
    torch.manual_seed(0)
    block = randomize_(FractalBlock(3, 4, 3)).eval()
    x = _input(1)
    with torch.no_grad():
        # only the deepest column at every join == the deepest column alone
        assert torch.equal(block(x, keep=[(3,), (3,)]), block(x, column=3))
        # only column 1 at the last join == column 1 alone, whatever the first join kept
        assert torch.equal(block(x, keep=[(2,), (1,)]), block(x, column=1))
        # dropping column 1 at the last join: mean of columns 2 and 3 over the shared first join
        mid = fractal_join([block.columns[1][0](x), block.columns[2][1](block.columns[2][0](x))])
        expected = block.pool(fractal_join([block.columns[1][1](mid), block.columns[2][3](block.columns[2][2](mid))]))
        assert torch.equal(block(x, keep=[(2, 3), (2, 3)]), expected)
    with pytest.raises(ValueError):
        block(x, keep=[(2, 3), ()])
    with pytest.raises(ValueError):
        block(x, keep=[(1,), (1, 2, 3)])  # column 1 is not an input of the first join


def test_drop_path_plan_is_per_batch() -> None:
    # One decision covers the whole mini-batch: a global draw runs one column for every sample.
    model = _narrow(global_drop_ratio=1.0).train()
    _bn_eval(model)
    x = _input(4)
    torch.manual_seed(2)
    with torch.no_grad():
        got = model(x)
        k = model.last_drop_path.column
        model.eval()
        expected = model(x, column=k)
    assert torch.equal(got, expected)
