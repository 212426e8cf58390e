"""On Keras' torch backend, convolutions, batch norms and optimizer updates run as PyTorch's own kernels.

Keras' torch backend keeps Keras' channels-last (``NHWC``) tensors and, for every convolution,
copies the input to channels-first, then to PyTorch's channels-last memory format, and the kernel
from Keras' ``(kh, kw, in, out)`` layout to PyTorch's (the gradient back again); its BatchNorm is
a dozen element-wise ops. Yet an ``NHWC`` tensor *is*, viewed as ``NCHW``, a tensor in PyTorch's
``channels_last`` memory format. :func:`use_torch_kernels` therefore makes

* each pointwise (1x1, stride 1) ``Conv2D`` a matrix product of the ``NHWC`` tensor and the kernel
  as Keras stores it: nothing is copied, forward or backward (most of a ResNeXt's weights are in
  these layers, so most of the kernel copies go too);
* every other ``Conv2D`` one ``F.conv2d`` on the channels-last view (only the kernel changes layout);
* each ``BatchNormalization`` PyTorch's fused batch norm on that view;
* each ``MaxPooling2D`` / ``AveragePooling2D`` PyTorch's pooling on that view.

A ResNeXt-50 training step then runs at 0.99x PyTorch's own (channels_last) images/s, where
Keras' own code runs at 0.67x; ResNet50V2 at 0.96x (0.72x) and DenseNet-121 at 0.84x (0.57x)
(benchmarks/keras_vs_torch.py; figures in benchmarks/RESULTS.md).

The layers keep their classes: only the bound ``convolution_op`` / ``call`` of each instance is
replaced, so a saved ``.keras`` file is exactly what Keras writes and loads on every backend, and
anything the fast path does not cover (another backend, a dtype other than float32, ``same``
padding with a stride or on a pooling layer, masks, BatchNorm renormalisation or an axis other
than the last) falls back to Keras' own code. The results equal Keras' own to float32 rounding:
outputs, gradients and the moving statistics (tests/keras/test_torch_kernels.py).

:func:`use_torch_optimizer` gives a Keras ``AdamW`` PyTorch's fused AdamW kernel (Keras' own update
on this backend is a dozen ``_foreach`` passes over every weight, with their temporaries), and a
subclass of Keras' ``SGD`` the multi-tensor update Keras gives only to ``SGD`` itself. For a
ResNeXt-50 on 2 CPU cores an AdamW update then takes 14 ms instead of 96 ms (PyTorch's own fused
AdamW: 13 ms), a ``CoupledSGD`` one 28 ms instead of 69 ms (benchmarks/keras_optimizer_speed.py).
"""

from __future__ import annotations

import types
from typing import Any

import keras
from keras import ops

__all__ = ["use_torch_kernels", "use_torch_optimizer"]


def use_torch_kernels(model: keras.Model) -> int:
    """Give every ``Conv2D``, ``BatchNormalization`` and 2-D pooling layer of ``model`` PyTorch's
    channels-last kernels when Keras runs on its torch backend (elsewhere nothing changes); returns
    how many layers now use them."""
    if keras.backend.backend() != "torch":
        return 0
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is keras.layers.Conv2D:
            layer.convolution_op = types.MethodType(_conv2d, layer)
            changed += 1
        elif type(layer) is keras.layers.BatchNormalization:
            layer.call = types.MethodType(_batch_norm, layer)
            changed += 1
        elif type(layer) in (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D):
            layer.call = types.MethodType(_pool2d, layer)
            changed += 1
    return changed


def _conv2d(layer: keras.layers.Conv2D, inputs: Any, kernel: Any) -> Any:
    """``Conv2D.convolution_op`` as a matrix product (pointwise) or one ``F.conv2d`` on the
    channels-last view of the input (every other supported case); Keras' own code otherwise."""
    import torch
    import torch.nn.functional as F

    symmetric = all(s == 1 for s in layer.strides) and all(k % 2 for k in layer.kernel_size)
    if (
        inputs.ndim != 4
        or inputs.dtype != torch.float32
        or layer.data_format != "channels_last"
        or (layer.padding == "same" and not symmetric)
    ):
        return keras.layers.Conv2D.convolution_op(layer, inputs, kernel)
    if tuple(layer.kernel_size) == (1, 1) and layer.groups == 1 and all(s == 1 for s in layer.strides):
        # a pointwise convolution is a matrix product over the channels: on the NHWC tensor and the
        # (1, 1, in, out) kernel as they are, so neither is copied, forward or backward
        return torch.matmul(inputs, ops.convert_to_tensor(kernel)[0, 0])
    if layer.padding == "same":  # stride 1, odd kernel: Keras' "same" pads (k - 1) * d / 2 on each side
        padding: Any = tuple(d * (k - 1) // 2 for d, k in zip(layer.dilation_rate, layer.kernel_size))
    else:
        padding = 0
    weight = ops.convert_to_tensor(kernel).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(inputs.permute(0, 3, 1, 2), weight, None, layer.strides, padding, layer.dilation_rate, layer.groups)
    return out.permute(0, 2, 3, 1)


def _pool2d(layer: keras.layers.MaxPooling2D | keras.layers.AveragePooling2D, inputs: Any) -> Any:
    """A pooling layer's ``call`` as PyTorch's pooling on the channels-last view (Keras' own torch
    code copies the input to channels-first and hands back a strided view, which makes the next
    element-wise op slow); only ``valid`` padding, which is what resnexus' models use."""
    import torch
    import torch.nn.functional as F

    if (
        inputs.ndim != 4
        or inputs.dtype != torch.float32
        or layer.padding != "valid"
        or layer.data_format != "channels_last"
    ):
        return type(layer).call(layer, inputs)
    pool = F.max_pool2d if isinstance(layer, keras.layers.MaxPooling2D) else F.avg_pool2d
    return pool(inputs.permute(0, 3, 1, 2), layer.pool_size, layer.strides).permute(0, 2, 3, 1)


def _batch_norm(layer: keras.layers.BatchNormalization, inputs: Any, training: Any = None, mask: Any = None) -> Any:
    """``BatchNormalization.call`` as PyTorch's fused batch norm on the channels-last view; the
    moving statistics are updated as Keras does (the batch's biased variance, Keras' momentum)."""
    import torch
    import torch.nn.functional as F

    if (
        mask is not None
        or layer.renorm
        or inputs.ndim != 4
        or inputs.dtype != torch.float32
        or layer.axis not in (-1, 3)
    ):
        return keras.layers.BatchNormalization.call(layer, inputs, training=training, mask=mask)
    x = inputs.permute(0, 3, 1, 2)
    gamma = ops.convert_to_tensor(layer.gamma) if layer.scale else None
    beta = ops.convert_to_tensor(layer.beta) if layer.center else None
    if training and layer.trainable:
        out, mean, inverse_std = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, layer.epsilon)
        with torch.no_grad():
            variance = (inverse_std.double().pow(-2) - layer.epsilon).clamp_(min=0.0).float()
            keep = layer.momentum
            layer.moving_mean.assign(ops.convert_to_tensor(layer.moving_mean) * keep + mean * (1.0 - keep))
            layer.moving_variance.assign(ops.convert_to_tensor(layer.moving_variance) * keep + variance * (1.0 - keep))
    else:
        mean = ops.convert_to_tensor(layer.moving_mean)
        variance = ops.convert_to_tensor(layer.moving_variance)
        out = F.batch_norm(x, mean, variance, gamma, beta, False, 0.0, layer.epsilon)
    return out.permute(0, 2, 3, 1)


def use_torch_optimizer(optimizer: keras.optimizers.Optimizer) -> bool:
    """Give a Keras optimizer on the torch backend PyTorch's multi-tensor update, with Keras'
    arithmetic; returns whether it did (elsewhere nothing changes).

    * ``AdamW``: PyTorch's fused AdamW kernel, weight decay first and then Adam with Keras' epsilon.
    * A subclass of ``SGD`` that keeps SGD's update (``CoupledSGD``): the ``_foreach`` update that
      Keras' torch backend gives its own ``SGD`` class but not its subclasses, which update one
      variable at a time.

    Only the instance's bound methods change: its config, variables and saved state stay Keras'
    own, so a checkpoint resumes the same on any backend."""
    if keras.backend.backend() != "torch":
        return False
    from keras.src.backend.torch.optimizers import torch_parallel_optimizer, torch_sgd

    if isinstance(optimizer, keras.optimizers.AdamW) and not optimizer.amsgrad:
        if not isinstance(optimizer, torch_parallel_optimizer.TorchParallelOptimizer):  # a subclass: its own update
            return False
        optimizer._apply_weight_decay = types.MethodType(_decay_in_update, optimizer)
        optimizer._parallel_update_step = types.MethodType(_fused_adamw_update, optimizer)
        return True
    sgd = keras.optimizers.SGD
    if (
        isinstance(optimizer, sgd)
        and not isinstance(optimizer, torch_sgd.SGD)
        and type(optimizer).update_step is sgd.update_step
    ):
        parallel = torch_parallel_optimizer.TorchParallelOptimizer
        optimizer._backend_update_step = types.MethodType(parallel._backend_update_step, optimizer)
        optimizer._parallel_update_step = types.MethodType(torch_sgd.SGD._parallel_update_step, optimizer)
        return True
    return False


def _decay_in_update(optimizer: keras.optimizers.AdamW, variables: list[Any]) -> None:
    """The fused kernel applies the weight decay itself, as its first operation: Keras' separate pass is skipped."""


def _fused_adamw_update(
    optimizer: keras.optimizers.AdamW, grads: list[Any], variables: list[Any], learning_rate: Any
) -> None:
    """Keras' Adam step as ``torch._fused_adamw_``, weights with and without decay in one call each.

    Keras divides by ``sqrt(v) + epsilon`` after scaling the rate by the bias corrections; PyTorch
    divides by ``sqrt(v / (1 - beta_2^t)) + eps``: the two agree when ``eps = epsilon / sqrt(1 - beta_2^t)``."""
    import torch

    params = [v.value for v in variables]
    if any(p.dtype != torch.float32 or g is None or g.dtype != torch.float32 for p, g in zip(params, grads)):
        # Keras' own update, with the weight decay that _decay_in_update skipped
        type(optimizer)._apply_weight_decay(optimizer, variables)
        type(optimizer)._parallel_update_step(optimizer, grads, variables, learning_rate)
        return
    step = float(ops.convert_to_numpy(optimizer.iterations)) + 1.0
    eps = optimizer.epsilon / (1.0 - optimizer.beta_2**step) ** 0.5
    lr = float(ops.convert_to_numpy(learning_rate))
    decay = float(optimizer.weight_decay or 0.0)
    groups: dict[float, list[int]] = {decay: [], 0.0: []}
    for i, variable in enumerate(variables):
        groups[decay if decay and optimizer._use_weight_decay(variable) else 0.0].append(i)
    for weight_decay, members in groups.items():
        if not members:
            continue
        slots = [optimizer._get_variable_index(variables[i]) for i in members]
        steps = torch.full((), step, dtype=torch.float32, device=params[members[0]].device)
        torch._fused_adamw_(
            [params[i] for i in members],
            [grads[i] for i in members],
            [optimizer._momentums[k].value for k in slots],
            [optimizer._velocities[k].value for k in slots],
            [],
            [steps] * len(members),
            lr=lr,
            beta1=optimizer.beta_1,
            beta2=optimizer.beta_2,
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
