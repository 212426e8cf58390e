"""The three ResNeXt block forms (Xie et al., Figure 3) are one function with three layouts."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import resnexus
from resnexus.models.blocks import BasicBlock, Bottleneck, make_downsample
from resnexus.models.forms import (
    ResNeXtBlockA,
    ResNeXtBlockB,
    bottleneck_width_for_cardinality,
    convert_block,
    convert_model_form,
    form_of,
)
from tests.helpers import max_abs_diff, randomize_

TOL = 1e-5
PAIRS = [(s, t) for s, t in itertools.product("abc", repeat=2) if s != t]


def strided_block() -> Bottleneck:
    """Stride 2 with a projection shortcut: 64 -> 128 channels, C=4 paths of width d=8."""
    torch.manual_seed(0)
    block = Bottleneck(64, 32, stride=2, downsample=make_downsample(64, 128, 2, False), groups=4, base_width=16)
    return randomize_(block, seed=1)


def identity_block() -> Bottleneck:
    """Stride 1, identity shortcut: 128 -> 128 channels, C=8 paths of width d=4."""
    torch.manual_seed(0)
    return randomize_(Bottleneck(128, 32, stride=1, groups=8, base_width=8), seed=2)


BLOCKS = {"stride2_downsample": (strided_block, 64), "stride1_identity": (identity_block, 128)}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("source,target", PAIRS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forms_compute_the_same_function(kind: str, source: str, target: str, mode: str) -> None:
    make, in_channels = BLOCKS[kind]
    reference = make()
    src = copy.deepcopy(reference) if source == "c" else convert_block(reference, source)
    dst = convert_block(src, target)
    assert form_of(src) == source and form_of(dst) == target
    x = torch.randn(2, in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    for m in (reference, src, dst):
        m.train(mode == "train")
    with torch.no_grad():
        expected = reference(x.clone())
        got_src, got_dst = src(x.clone()), dst(x.clone())
    assert got_dst.shape == expected.shape
    assert max_abs_diff(got_src, expected) < TOL
    assert max_abs_diff(got_dst, expected) < TOL
    if mode == "train":  # batch statistics were used and running statistics moved identically
        ref_stats = convert_block(reference, "c").state_dict()
        for k, v in convert_block(dst, "c").state_dict().items():
            assert max_abs_diff(v, ref_stats[k]) < TOL, k


@pytest.mark.parametrize("kind", BLOCKS)
def test_round_trip_is_lossless(kind: str) -> None:
    block = BLOCKS[kind][0]()
    back = convert_block(convert_block(convert_block(block, "a"), "b"), "c")
    assert type(back) is Bottleneck
    expected = block.state_dict()
    got = back.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_conversion_keeps_mode_and_does_not_share_the_shortcut() -> None:
    block = strided_block().eval()
    a = convert_block(block, "a")
    assert not a.training and a.downsample is not block.downsample
    with torch.no_grad():
        a.downsample[0].weight.zero_()
    assert block.downsample[0].weight.abs().sum() > 0


def test_parameter_counts_equal() -> None:
    """Forms are reparameterizations: same count. Strided block: conv1 64*32 + conv2 32*8*9 +
    conv3 32*128 + BNs 2*(32+32+128) + shortcut 64*128 + 2*128 = 17,280."""
    block = strided_block()
    counts = {f: n_params(convert_block(block, f)) for f in "abc"}
    assert counts == {"a": 17_280, "b": 17_280, "c": 17_280}
    # the paper's ResNeXt-50 conv2 block (256-d in/out, C=32, d=4): ~70k weights, 71,168 with BN
    paper = Bottleneck(256, 64, groups=32, base_width=4)
    for cls in (ResNeXtBlockA, ResNeXtBlockB, Bottleneck):
        assert n_params(cls(256, 64, groups=32, base_width=4)) == n_params(paper) == 71_168


def test_constructors_match_bottleneck_signature() -> None:
    for cls in (ResNeXtBlockA, ResNeXtBlockB):
        block = cls(64, 32, 2, make_downsample(64, 128, 2, False), 4, 16)
        assert (block.cardinality, block.width_per_group, block.out_channels, block.expansion) == (4, 8, 128, 4)
        assert len(block.paths) == 4 and block.paths[0].conv2.stride == (2, 2)
        assert block(torch.randn(1, 64, 8, 8)).shape == (1, 128, 4, 4)


def small_resnext(**kw: object) -> nn.Module:
    """ResNeXt-50's layout narrowed (stage widths / 4, C=4 paths of d=4, 1-2 blocks per stage)."""
    return resnexus.create_model(
        "resnext50_32x4d",
        num_classes=10,
        layers=(1, 2, 1, 1),
        stage_planes=(16, 32, 64, 128),
        cardinality=4,
        base_width=16,
        **kw,
    )


def test_model_conversion_preserves_logits() -> None:
    model = randomize_(small_resnext()).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        for form in "ab":
            converted = convert_model_form(model, form)
            blocks = [m for m in converted.modules() if isinstance(m, (ResNeXtBlockA, ResNeXtBlockB, Bottleneck))]
            assert len(blocks) == 5 and all(form_of(b) == form for b in blocks)
            assert n_params(converted) == n_params(model)
            assert max_abs_diff(converted(x), expected) < 1e-4
            assert max_abs_diff(convert_model_form(converted, "c")(x), expected) < 1e-4
    assert all(type(m) is not ResNeXtBlockA for m in model.modules())  # the input was not touched


@pytest.mark.slow
def test_full_resnext50_conversion_preserves_logits() -> None:
    model = randomize_(resnexus.create_model("resnext50_32x4d", num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        got = convert_model_form(model, "a")(x)
    assert max_abs_diff(got, expected) < 1e-4


def test_create_model_block_form() -> None:
    model_c = randomize_(small_resnext()).eval()
    for form, cls in (("a", ResNeXtBlockA), ("b", ResNeXtBlockB), ("c", Bottleneck)):
        model = small_resnext(block_form=form).eval()
        assert type(model.layer1[0]) is cls and type(model.layer4[0]) is cls
        assert n_params(model) == n_params(model_c)
        # the state dict of a converted model loads strictly into a model built in that form
        model.load_state_dict(convert_model_form(model_c, form).state_dict())
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert max_abs_diff(model(x), model_c(x)) < 1e-4


def test_block_form_zero_init_last() -> None:
    model = small_resnext(block_form="a", zero_init_last=True)
    assert all(m.bn3.weight.abs().sum() == 0 for m in model.modules() if isinstance(m, ResNeXtBlockA))


def test_bad_form_names() -> None:
    block = identity_block()
    with pytest.raises(ValueError, match="unknown ResNeXt block form 'd'"):
        convert_block(block, "d")
    with pytest.raises(ValueError, match="unknown ResNeXt block form"):
        convert_model_form(nn.Sequential(block), "A")
    with pytest.raises(ValueError, match="unknown ResNeXt block form"):
        small_resnext(block_form="grouped")
    with pytest.raises(ValueError, match="not a ResNeXt bottleneck"):
        convert_block(BasicBlock(8, 8), "a")
    with pytest.raises(ValueError, match="needs a bottleneck"):
        resnexus.create_model("resnet18", block_form="a")


@pytest.mark.parametrize("cardinality,width", [(1, 64), (2, 40), (4, 24), (8, 14), (32, 4)])
def test_table2_widths(cardinality: int, width: int) -> None:
    assert bottleneck_width_for_cardinality(cardinality) == width


def test_table2_rule_is_nearest() -> None:
    """C=2: the exact root is 39.95; 40 is kept because it is closest, not because it floors."""
    budget = 256 * 64 * 2 + 9 * 64 * 64  # 69,632

    def cost(c: int, d: int) -> int:
        return c * (256 * d * 2 + 9 * d * d)

    for c in (1, 2, 4, 8, 16, 32, 64):
        d = bottleneck_width_for_cardinality(c)
        assert all(abs(cost(c, d) - budget) <= abs(cost(c, e) - budget) for e in range(1, 130))
    assert cost(2, 40) > budget > cost(2, 39)
    # other stages scale with the channels (conv3 stage: 512-d, reference width 128)
    assert bottleneck_width_for_cardinality(32, channels=512, reference_width=128) == 8
    with pytest.raises(ValueError):
        bottleneck_width_for_cardinality(0)


def test_converted_block_is_independent_copy() -> None:
    block = identity_block()
    b = convert_block(block, "b")
    snapshot = copy.deepcopy(block.state_dict())
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    for k, v in block.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_width_not_from_an_integer_base_width() -> None:
    """planes=48, base_width=10 -> d=int(7.5)=7: no integer base_width gives 7 back from 48, so
    conversion must build the layers from the widths themselves."""
    block = randomize_(Bottleneck(192, 48, groups=3, base_width=10), seed=4).eval()
    assert block.conv2.in_channels == 21
    x = torch.randn(1, 192, 6, 6)
    with torch.no_grad():
        expected = block(x.clone())
        for form in "ab":
            other = convert_block(block, form)
            assert other.width_per_group == 7
            back = convert_block(other, "c")
            assert back.conv2.in_channels == 21
            assert max_abs_diff(other(x.clone()), expected) < TOL
            assert max_abs_diff(back(x.clone()), expected) < TOL
