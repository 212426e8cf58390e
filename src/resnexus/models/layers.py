"""Small pieces more than one family uses."""

from __future__ import annotations

from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with 'same' padding."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


def init_conv_bn_linear(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit BatchNorm, PyTorch's default for the classifier.

    This is torchvision's scheme, so our models start from the same distribution as theirs.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def zero_init_last_norms(model: nn.Module) -> None:
    """Start every residual block of ``model`` as the identity (Goyal et al., 2017).

    Each block knows which of its norms is last and zeroes its scale in ``zero_init_last()``
    (timm's convention), so this one loop serves every family and every block form.
    """
    for module in model.modules():
        if module is not model and callable(getattr(module, "zero_init_last", None)):
            module.zero_init_last()


def freeze_stages(model: nn.Module, stages: int) -> list[str]:
    """Freeze the stem and the first ``stages`` stages of ``model`` (its ``feature_info`` order)
    for fine-tuning; returns the names of the parameters frozen.

    Early stages hold generic edge and texture filters that a few hundred images can only
    degrade. Their parameters stop training and their BatchNorm layers keep the pretrained
    statistics (they run in eval mode even while the model trains: batches of 16 would give noisy
    ones). The state dict is unchanged, so checkpoints load into an ordinary model.
    """
    info = getattr(model, "feature_info", None) or []
    if stages == 0:
        return []
    if not 0 < stages <= len(info):
        raise ValueError(f"cannot freeze {stages} stages: {type(model).__name__} has {len(info)}")
    last = info[stages - 1].module
    frozen: list[nn.Module] = []
    inside = False
    for name, module in model.named_modules():
        if inside and not name.startswith(last + "."):
            break  # past the last frozen stage
        inside = inside or name == last
        if module is not model and not any(True for _ in module.children()):
            frozen.append(module)
    names = {id(p): n for n, p in model.named_parameters()}
    frozen_names = []
    for module in frozen:
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
            frozen_names.append(names[id(p)])
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_keep_in_eval_mode)
    return frozen_names


def _keep_in_eval_mode(module: nn.Module, args: tuple) -> None:
    module.training = False
