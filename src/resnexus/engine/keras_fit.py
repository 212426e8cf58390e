"""Training with Keras: ``train --framework keras``, the same run as the PyTorch path, with ``model.fit``.

:func:`train_keras` runs engine/run.py's lifecycle with a :class:`KerasBackend`, so everything around
the training loop is the PyTorch run's: the data check and split, the decoded-image cache, the epoch
order (``EpochBatches``: the same images in the same batches for a seed), the held-out loaders and
their preprocessing, the history rows, best-epoch selection, when checkpoints are saved, and the
final test: ``best.keras`` is converted with :func:`resnexus.keras.to_torch` and evaluated by the
PyTorch evaluation code, so metrics.json and report.md are computed as a PyTorch run's are. The run directory holds ``checkpoints/best.keras`` (the model alone, with the inference
metadata inside; ``evaluate``, ``predict``, ``explain``, ``export`` and ``serve`` take it),
``checkpoints/last.keras`` (model and optimizer state, plus the run record: what ``--resume`` needs),
``history.csv``, ``metrics.json`` and ``report.md``.

What differs from the PyTorch path (Keras' own layers do the augmentation, per batch, in the data
pipeline, seeded by (seed, epoch, step), so a resumed run repeats an uninterrupted one's batches):

* Crops: each image is resized (shorter side ``image_size / crop_fraction``) and centre-cropped to a
  square first (Keras layers need equal sizes in a batch), then zoomed in to a window whose side is
  drawn from the square roots of ``random_resized_crop_scale`` with the aspect ratio kept
  (torchvision also draws the aspect ratio, 3/4-4/3) and moved (reflecting at the border): Keras'
  ``RandomZoom`` + ``RandomTranslation`` composed into one affine resampling
  (:func:`zoom_and_shift_transforms`; one ``grid_sample`` on the torch backend), then ``Resizing``
  to ``image_size``. The PyTorch path crops the whole image, not its centre square.
* ``RandomFlip`` flips with probability 0.5: ``hflip`` / ``vflip`` switch it on (a warning is logged
  for another probability). ``rotation``: ``RandomRotation``.
* Colour jitter: ``RandomColorJitter`` (Keras' brightness is additive, torchvision's multiplicative).
* Random Erasing: ``RandomErasing`` on the normalised image with standard-normal noise, as in
  PyTorch; Keras draws the rectangle's sides independently (area 2-33 % on average, not exactly).
* Mixup / CutMix: ``keras.layers.MixUp`` (one weight per image; torchvision draws one per batch) and
  ``keras.layers.CutMix``; with both on, each batch picks one. Training accuracy is then measured
  against the mixed label's larger part (PyTorch: against the image's own label).
* Optimisers: Keras' AdamW (epsilon 1e-8 as in PyTorch, decoupled decay on conv and dense kernels
  only) and SGD with Nesterov momentum 0.9 and PyTorch's coupled L2 decay (:class:`CoupledSGD`;
  Keras folds the learning rate into the momentum buffer, PyTorch does not: equal at a constant rate).
  The learning-rate schedule is the same per-step warm-up + cosine (:class:`WarmupCosine`).
* Precision is fp32. A stop signal (Ctrl-C, SIGTERM) ends the run after the current epoch (PyTorch:
  after the current step); a second Ctrl-C stops at once. Not supported (refused by
  :func:`~resnexus.engine.config.check_keras_options`): --freeze, --ema, --balance loss, --compile,
  --tensorboard, --sync-bn, bf16 / fp16, several processes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from torch import nn

from ..data import Samples, eval_transform
from ..data.dataset import ImageDataset
from ..data.sampler import EpochBatches, sample_seed
from ..keras import create_model, to_torch
from ..keras.files import load_keras, read_keras_metadata, save_keras
from ..keras.torch_kernels import use_torch_optimizer
from ..models.registry import get_entry
from . import distributed
from .checkpoint import checkpoint_metadata
from .config import TrainConfig
from .progress import ProgressLog, progress_modes
from .run import HeldOut, Run, RunRecord, TrainResult, cache_options, execute
from .run_output import describe_weights
from .rundir import RunDir
from .runtime import Runtime

logger = logging.getLogger(__name__)

__all__ = ["CoupledSGD", "KerasAugment", "KerasBackend", "WarmupCosine", "train_keras"]


def train_keras(config: TrainConfig, splits: dict[str, Samples] | None = None) -> TrainResult:
    """Train and evaluate one model with Keras' ``model.fit``; see the module docstring.

    ``splits`` as for :func:`resnexus.engine.fit.train` (cross-validation and ``compare``).
    """
    return execute(KerasBackend(), config, splits)


class KerasBackend:
    """The Keras side of a run (engine/run.py's :class:`~resnexus.engine.run.Backend`): one process,
    fp32, ``model.fit`` over :class:`TrainBatches` with :class:`_Epochs` doing the run's end of epoch;
    a stop signal ends the run after the current epoch."""

    framework = "keras"

    def __init__(self) -> None:
        self.trained_with = keras_description()

    def start(self, config: TrainConfig) -> tuple[TrainConfig, distributed.Context]:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--framework keras trains in one process: --nproc / torchrun are PyTorch only")
        ctx = distributed.Context()  # one process: the held-out helpers shard nothing
        set_random_seed(config.seed)
        self.runtime = Runtime(ctx.device, None, False)
        return config, ctx

    def build(self, run: Run) -> RunRecord:
        config = run.config
        self.model = create_model(
            config.model,
            num_classes=len(run.class_names),
            input_shape=(config.image_size, config.image_size, 3),
            weights=config.weights,
            weights_dir=config.weights_dir,
            **{**training_block_form(config), **config.model_config},
        )
        self.steps = len(EpochBatches(run.splits["train"].labels, config.batch_size, config.seed))
        compile_for_training(self.model, config, steps_per_epoch=self.steps)
        self.record = RunRecord()
        return self.record

    def describe(self, run: Run) -> str:
        return _describe_model(self.model, run.config, self.steps)

    def load_for_resume(self, path: Path, check_data: Callable[[dict[str, Any] | None], None]) -> dict[str, Any]:
        saved = read_keras_metadata(path)
        check_data(saved.get("data"))
        self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)  # weights and optimizer state (its step count: the schedule's position)
        self.record.load_record(saved["run_state"])
        return saved["run_state"]

    def fit(self, run: Run) -> None:
        config, record = run.config, self.record
        train_data = TrainBatches(
            run.splits["train"], config, run.entry.mean, run.entry.std, first_epoch=record.epoch + 1
        )
        epochs = _Epochs(run, train_data)
        if record.epoch < config.epochs:
            self.model.fit(
                train_data,
                epochs=config.epochs,
                initial_epoch=record.epoch,
                steps_per_epoch=self.steps,  # one pass over train_data for all epochs: see TrainBatches
                shuffle=False,  # the order is EpochBatches' (Keras would shuffle the batches with `random`)
                callbacks=[epochs],
                verbose=1 if epochs.progress_modes.bar else 0,  # Keras' bar on a terminal
            )
        if epochs.interrupted:
            raise run.interrupted(f"epoch {record.epoch}")

    def save(self, run_dir: RunDir, metadata: dict[str, Any], *, best: bool, last: bool) -> None:
        """best.keras the model alone, last.keras with the optimizer state and the run record; both
        carry the metadata a PyTorch checkpoint does, ``framework: "keras"`` and the ``keras_backend``."""
        backend = {"framework": "keras", "keras_backend": keras.backend.backend()}  # what --resume checks
        weights = checkpoint_metadata(in_chans=3, **metadata) | backend
        if best:
            # a copy without the optimizer: what inference loads (a third of last.keras for AdamW)
            clean = keras.Model.from_config(self.model.get_config())
            clean.set_weights(self.model.get_weights())
            save_keras(clean, run_dir.best("keras"), weights)
        if last:
            meta = weights | {"run_state": self.record.record_dict(), "data": self.record.data}
            save_keras(self.model, run_dir.last("keras"), meta)

    def best_model(self, run: Run) -> nn.Module:
        """best.keras converted to PyTorch: evaluated by the same code as a PyTorch run's."""
        best_keras, _ = load_keras(run.dir.best("keras"))
        return to_torch(best_keras, **run.config.model_config).to(self.runtime.device)


def training_block_form(config: TrainConfig) -> dict[str, str]:
    """``{"block_form": "split"}`` for a grouped model (ResNeXt, Res2NeXt) trained on TensorFlow's CPU kernels.

    TensorFlow's CPU backward pass of a grouped ``Conv2D`` is slow: ResNeXt-50 trained at 0.53
    images/s grouped and 4.1 split (batch 8, 96 px, 2 cores; benchmarks/keras_vs_torch.py). The split
    form holds the same numbers (``block_form`` is not part of the weights), so ``best.keras`` converts
    as any other; a ``block_form`` in the spec overrides wins.
    """
    grouped = {**get_entry(config.model).config, **config.model_config}.get("cardinality", 1) > 1
    if not grouped or keras.backend.backend() != "tensorflow":
        return {}
    import tensorflow as tf  # the backend in use: already loaded

    return {} if tf.config.list_physical_devices("GPU") else {"block_form": "split"}


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed`` without loading TensorFlow into a JAX or torch process: Keras
    imports it there only to seed tf.data, which these runs do not use (seconds of start-up saved)."""
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # `import tensorflow` fails: Keras skips it
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


def keras_description() -> str:
    """``Keras 3.x (tensorflow backend), model.fit``: what report.md says trained the model."""
    return f"Keras {keras.__version__} ({keras.backend.backend()} backend), model.fit"


def _describe_model(model: keras.Model, config: TrainConfig, steps: int) -> str:
    start = "" if config.weights is None else f", from {describe_weights(config, model)}"
    params = sum(math.prod(v.shape) for v in model.trainable_weights)  # PyTorch's parameters (no BN statistics)
    return (
        f"model: {config.model} ({params:,} params{start}) in {keras_description()}, fp32; "
        f"{config.epochs} epochs x {steps} steps"
    )


# -- the model, its loss and optimiser -----------------------------------------------------------
@keras.saving.register_keras_serializable(package="resnexus")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to zero at ``total_steps``:
    the per-step schedule of the PyTorch path (``fit.warmup_cosine``), step ``k`` using factor(k)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        self.peak, self.warmup_steps, self.total_steps = float(peak), int(warmup_steps), int(total_steps)

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        warm = (step + 1.0) / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + keras.ops.cos(math.pi * keras.ops.minimum(1.0, progress)))
        return self.peak * keras.ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="resnexus")
class CoupledSGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term added to the gradient, as ``torch.optim.SGD`` does it
    (Keras' own ``weight_decay`` is decoupled: with momentum 0.9 it decays 10x less), on kernels
    only (variables of rank > 1: never on BatchNorm scales and biases)."""

    def __init__(self, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def apply(self, grads: list[Any], trainable_variables: list[Any] | None = None) -> Any:
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        if self.l2:
            grads = list(grads)
            kernels = [i for i, (g, v) in enumerate(zip(grads, variables)) if g is not None and len(v.shape) > 1]
            if keras.backend.backend() == "torch":  # one multi-tensor op, not two ops a kernel
                import torch

                summed = torch._foreach_add(
                    [grads[i] for i in kernels], [variables[i].value for i in kernels], alpha=self.l2
                )
            else:
                summed = [grads[i] + self.l2 * variables[i] for i in kernels]
            for i, g in zip(kernels, summed):
                grads[i] = g
        return super().apply(grads, trainable_variables)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"l2": self.l2}


def compile_for_training(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    """Loss from logits with label smoothing, the config's optimiser, rate, decay and schedule."""
    schedule = WarmupCosine(config.lr, round(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch)
    clip = {"global_clipnorm": config.clip_grad_norm} if config.clip_grad_norm else {}
    if config.optimizer == "sgd":
        optimizer = CoupledSGD(l2=config.weight_decay, learning_rate=schedule, momentum=0.9, nesterov=True, **clip)
    else:
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=config.weight_decay, epsilon=1e-8, **clip
        )
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    use_torch_optimizer(optimizer)  # on the torch backend: PyTorch's multi-tensor update, Keras' arithmetic
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=False,  # XLA compiles for minutes on small CPUs and gains nothing there
    )


# -- data ----------------------------------------------------------------------------------------
class KerasAugment:
    """The training augmentation of a batch with Keras' preprocessing layers (see the module
    docstring for how it differs from the PyTorch path): uint8 NHWC squares and integer labels in,
    normalised float32 NHWC images and (mixed) one-hot labels out; ``seed`` fixes every draw."""

    def __init__(self, config: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int) -> None:
        self.config, self.augment, self.num_classes = config, config.augment, num_classes
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0
        for name in ("hflip", "vflip"):
            p = getattr(self.augment, name)
            if p not in (0.0, 0.5):
                logger.warning(f"warning: Keras' RandomFlip flips with probability 0.5, not augment.{name}={p}")

    def __call__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)

        def seeded() -> int:
            return int(rng.integers(0, 2**31 - 1))

        a, layers, size = self.augment, keras.layers, self.config.image_size
        x = images.astype(np.float32)
        if a.rotation:
            x = layers.RandomRotation(a.rotation / 360.0, fill_mode="constant", seed=seeded())(x, training=True)
        if a.random_resized_crop_scale[0] < 1.0:  # zoom in to a random window at a random position
            transforms = zoom_and_shift_transforms(len(x), x.shape[1], x.shape[2], a.random_resized_crop_scale, rng)
            x = affine_transform(x, transforms)
        if x.shape[1] != size or x.shape[2] != size:
            x = layers.Resizing(size, size)(x)
        flips = "horizontal_and_vertical" if a.hflip and a.vflip else "horizontal" if a.hflip else "vertical"
        if a.hflip or a.vflip:
            x = layers.RandomFlip(flips, seed=seeded())(x, training=True)
        if a.color_jitter > 0:
            j = a.color_jitter
            jitter = layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=j,
                contrast_factor=j,
                saturation_factor=(max(0.0, 0.5 - j / 2), min(1.0, 0.5 + j / 2)),
                seed=seeded(),
            )
            x = keras.ops.clip(jitter(x, training=True), 0.0, 255.0)
        x = (keras.ops.convert_to_numpy(x) - self.mean) / self.std
        if a.random_erasing > 0:  # on normalised images: standard-normal noise, as in PyTorch
            p = a.random_erasing
            erase = layers.RandomErasing(factor=(p, p), value_range=(0, 1), seed=seeded())
            x = erase(x, training=True)
        y = np.eye(self.num_classes, dtype=np.float32)[labels]
        mixers = [m for m, on in (("mixup", self.config.mixup > 0), ("cutmix", self.config.cutmix > 0)) if on]
        if mixers:
            kind = mixers[int(rng.integers(len(mixers)))]
            mixer = (
                layers.MixUp(alpha=self.config.mixup, seed=seeded())
                if kind == "mixup"
                else layers.CutMix(factor=self.config.cutmix, seed=seeded())
            )
            mixed = mixer({"images": x, "labels": y}, training=True)
            x, y = mixed["images"], mixed["labels"]
        return np.asarray(keras.ops.convert_to_numpy(x), np.float32), np.asarray(
            keras.ops.convert_to_numpy(y), np.float32
        )


def zoom_and_shift_transforms(
    n: int, height: int, width: int, scale: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Per image, the projective transform (Keras' ``[a0, a1, a2, b0, b1, b2, c0, c1]``, output pixel
    to input pixel) of a zoom into a window whose side is a fraction drawn uniformly from
    ``[sqrt(scale[0]), sqrt(scale[1])]`` of the image's (aspect kept), moved by up to
    ``(1 - sqrt(scale[0])) / 2`` of the image's height and width: what Keras' ``RandomZoom`` followed
    by ``RandomTranslation`` draw, composed into one resampling instead of two."""
    side = rng.uniform(math.sqrt(scale[0]), math.sqrt(scale[1]), n)
    reach = (1.0 - math.sqrt(scale[0])) / 2
    shift_y, shift_x = rng.uniform(-reach, reach, (2, n)) * np.array([[height], [width]])
    cy, cx = (height - 1) / 2, (width - 1) / 2
    transforms = np.zeros((n, 8), dtype=np.float32)
    transforms[:, 0] = transforms[:, 4] = side  # out(x) = in(side * (x - shift - c) + c)
    transforms[:, 2] = cx - side * (cx + shift_x)
    transforms[:, 5] = cy - side * (cy + shift_y)
    return transforms


def affine_transform(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """``keras.ops.image.affine_transform(images, transforms)``, bilinear, reflecting at the border.
    On the torch backend it is one ``grid_sample`` over the batch: Keras' torch implementation
    resamples image by image and channel by channel in Python (with it, a batch of 16 at 146 px
    took 0.16 s to augment on 2 CPU cores; with this, 0.03 s)."""
    if keras.backend.backend() != "torch":
        out = keras.ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="reflect")
        return np.asarray(keras.ops.convert_to_numpy(out), np.float32)
    return affine_transform_torch(images, transforms)


def affine_transform_torch(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """:func:`affine_transform` with ``F.grid_sample`` (``align_corners=False``: pixel ``i`` is
    the centre of ``[i - 0.5, i + 0.5]``, and "reflection" mirrors about the image's edge, as
    Keras' "reflect" does)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.require(images, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])).permute(0, 3, 1, 2)
    t = torch.from_numpy(np.asarray(transforms, dtype=np.float32))
    height, width = x.shape[2:]
    cols = torch.arange(width, dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float32)
    # input pixel coordinates of every output pixel, then grid_sample's [-1, 1] coordinates
    source_x = t[:, 0, None, None] * cols + t[:, 1, None, None] * rows[:, None] + t[:, 2, None, None]
    source_y = t[:, 3, None, None] * cols + t[:, 4, None, None] * rows[:, None] + t[:, 5, None, None]
    grid = torch.stack([(2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


class TrainBatches(keras.utils.PyDataset):
    """The training steps of epochs ``first_epoch`` .. ``config.epochs`` as Keras batches, in one
    sequence: item ``i`` is step ``i % steps`` of epoch ``first_epoch + i // steps``, so what a step
    holds depends on its index alone (Keras' tf.data pipeline prefetches ahead of the epoch
    callbacks). Each epoch is the PyTorch path's (:class:`EpochBatches`: the same images in the same
    batches for a seed and epoch, balanced with ``balance="sampler"``), from the same decoded-image
    cache, augmented by :class:`KerasAugment` seeded with (seed, epoch, step)."""

    def __init__(
        self,
        samples: Samples,
        config: TrainConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        first_epoch: int = 1,
    ) -> None:
        super().__init__(workers=max(1, config.workers or 0), use_multiprocessing=False)
        square = math.ceil(config.image_size / config.crop_fraction)  # the cached size: shorter side
        self.square = eval_transform(square, mean, std, crop_fraction=1.0)  # resize + centre square, uint8
        self.images = ImageDataset(samples, self.square.sample, **cache_options(config))
        self.labels = np.asarray(samples.labels, dtype=np.int64)
        self.order = EpochBatches(samples.labels, config.batch_size, config.seed, balance=config.balance == "sampler")
        self.augment = KerasAugment(config, mean, std, len(samples.class_names))
        self.seed, self.first_epoch, self.epochs = config.seed, first_epoch, config.epochs
        self.steps = len(self.order)  # the same every epoch: only the last, too small, batch is dropped
        self.images_per_epoch = sum(len(b) for b in self.order.global_batches())
        self._epochs: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return max(0, self.epochs - self.first_epoch + 1) * self.steps

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        with self._lock:  # Keras may call from several threads
            if epoch not in self._epochs:
                self.order.set_epoch(epoch)
                self._epochs = {e: b for e, b in self._epochs.items() if e >= epoch - 1}  # two epochs at most
                self._epochs[epoch] = self.order.global_batches()
            return self._epochs[epoch][step]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, step = self.first_epoch + index // self.steps, index % self.steps
        indices = self.batch_indices(epoch, step)
        crops = np.stack([self.images[int(i)][0].permute(1, 2, 0).numpy() for i in indices])
        return self.augment(crops, self.labels[indices], seed=sample_seed(self.seed, epoch, len(self.labels) + step))


def keras_predict(model: keras.Model, split: HeldOut, tta: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, class probabilities and mean cross-entropy of a Keras model on a held-out split,
    preprocessed exactly as the PyTorch path validates (``split.preprocess.batch``), channels-last."""
    labels, probs = [], []
    for images, y in split.loader:
        x = split.preprocess.batch(images).permute(0, 2, 3, 1).contiguous().numpy()
        p = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict_on_batch(x), axis=-1)).astype(np.float32)
        if tta:
            mirrored = model.predict_on_batch(np.ascontiguousarray(x[:, :, ::-1, :]))
            p = 0.5 * (p + keras.ops.convert_to_numpy(keras.ops.softmax(mirrored, axis=-1)).astype(np.float32))
        labels.append(y.numpy())
        probs.append(p)
    y_all, p_all = np.concatenate(labels), np.concatenate(probs)
    loss = float(-np.log(np.clip(p_all[np.arange(len(y_all)), y_all], 1e-12, None)).mean()) if len(y_all) else 0.0
    return y_all, p_all, loss


# -- after each epoch: the run's bookkeeping ---------------------------------------------------
class _Epochs(keras.callbacks.Callback):
    """Validation and :meth:`Run.end_epoch` (history row, best / last checkpoints, early stopping,
    the stop signal) after every epoch of ``model.fit``; a progress line every ``progress_every``
    seconds within an epoch where no bar is shown."""

    async_safe = True  # the batch hook only counts and logs: Keras may keep dispatching steps ahead

    def __init__(self, run: Run, data: TrainBatches) -> None:
        super().__init__()
        self.run, self.data, self.config = run, data, run.config
        self.interrupted = False
        self.started = time.perf_counter()
        self.progress_modes = progress_modes(run.config.verbose)
        self.progress: ProgressLog | None = None  # this epoch's, where there is no bar to watch
        self.epoch = 1

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        self.epoch = epoch + 1  # Keras counts epochs from 0
        if self.progress_modes.lines:
            where = f"epoch {self.epoch}/{self.config.epochs}"
            self.progress = ProgressLog(where, self.data.steps, self.config.progress_every, self.run.info)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.progress is not None:
            self.progress.update(len(self.data.batch_indices(self.epoch, batch)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs, held_out = logs or {}, self.run.held_out
        val = keras_predict(self.model, held_out["val"], self.config.tta) if "val" in held_out else None
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        train = (float(logs["loss"]), float(logs["accuracy"]), self.data.images_per_epoch)
        # Keras counts epochs from 0
        then = self.run.end_epoch(epoch + 1, lr, train, val, seconds=time.perf_counter() - self.started)
        if then != "continue":
            self.interrupted = then == "interrupt"
            self.model.stop_training = True


def keras_inference_speed(run_dir: Path, batch_size: int, image_size: int, min_seconds: float = 0.5) -> float:
    """Images/s of a Keras run's best.keras on one fixed batch (``predict_on_batch``), for ``compare``."""
    model, _ = load_keras(RunDir(run_dir).best("keras"))
    x = np.random.default_rng(0).standard_normal((batch_size, image_size, image_size, 3)).astype(np.float32)
    model.predict_on_batch(x)  # warm-up: tracing
    batches, start = 0, time.perf_counter()
    while True:
        model.predict_on_batch(x)
        batches += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or batches >= 100:
            return batches * batch_size / elapsed
