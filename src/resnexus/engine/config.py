"""What a run is asked to do: the :class:`TrainConfig`, the recipes that fill it, and its validation.

Everything here runs before the first step, so a bad value fails in a line, not hours into a run.
What reads the disk lives with the run (engine/run_checks.py: the run directory, the images, data
fingerprints; engine/model_checks.py: whether the model takes the image size); the device and
precision with the runtime (engine/runtime.py). The CLI builds its ``train`` help from :func:`field_help`, so the
defaults it states are the ones :func:`complete_config` applies.
"""

from __future__ import annotations

import logging
import math
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data import AugmentConfig, digits_folder
from ..data.split import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from ..models.registry import find_pretrained, get_entry, is_weights_tag
from .model_checks import MAX_IMAGE_SIZE, check_freeze, check_model_input

# Moved to the run's checks (engine/run_checks.py) and the runtime (engine/runtime.py); still importable
# from here, where cross-validation, compare, the benchmarks and older scripts import them.
from .run_checks import (  # noqa: F401
    check_before_training,
    check_run_dir,
    check_run_output,
    check_same_data,
    checked_splits,
    data_fingerprint,
    describe_splits,
    split_subfolders,
)
from .runtime import autocast_dtype, precision_name  # noqa: F401

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "resnext50_32x4d"
# The built-in default: real handwritten digits (scikit-learn), a CIFAR-sized ResNet, ~2 minutes on 2 cores.
BUILTIN_RECIPE: dict[str, Any] = dict(
    model="resnet20_cifar",
    image_size=32,
    epochs=15,
    batch_size=64,
    optimizer="sgd",
    lr=0.1,
    weight_decay=5e-4,
    warmup_epochs=1.0,
    augment=AugmentConfig(random_resized_crop_scale=(0.6, 1.0), hflip=0.0, color_jitter=0.0, random_erasing=0.0),
)
# The default for a user's folder: tuned on the MSLD photos (a few hundred images, trained from
# scratch on 2 CPU cores; benchmarks/msld_crossval.py and the README give the measurements).
# 128 px instead of 224 makes each epoch ~3x cheaper, which buys the longer schedule that a
# from-scratch ResNeXt-50 needs; AdamW converged where SGD at the linear-scaling rate barely moved.
DEFAULT_RECIPE: dict[str, Any] = dict(epochs=90, batch_size=16, optimizer="adamw", warmup_epochs=5.0)
SMALL_DATA_IMAGE_SIZE = 128  # for models whose native input is 224 px, when not starting from weights
MIN_VAL_FOR_SELECTION = 100  # below this, "best on validation" mostly picks noise (see README)
# Below this many images, a plain `train` that holds back val / test images says so and suggests
# `--folds 5` (estimate + refit on every image): at 150 photos the held-back third cost 18 points
# of accuracy on new patients (57.7 % vs 75.6 %, one seed each, issue 16); far above it, one
# held-out split costs little.
SMALL_DATA_HINT_IMAGES = 1000
# Per-optimizer defaults when lr / weight_decay are not given (SGD's rate scales with the batch).
ADAMW_LR = 1e-3
SGD_LR_PER_256 = 0.1  # Goyal et al.'s linear scaling rule: 0.1 for a batch of 256
# Fine-tuning (``weights`` given): a tenth of the from-scratch rates, so the pretrained features are
# adjusted rather than overwritten in the first steps, and a third of the schedule (they converge in
# a fraction of the from-scratch epochs). Explicit --epochs / --lr / --warmup-epochs still win.
FINETUNE_LR_FACTOR = 0.1
FINETUNE_RECIPE: dict[str, Any] = dict(epochs=30, warmup_epochs=1.0)
ADAMW_WEIGHT_DECAY = 0.05
SGD_WEIGHT_DECAY = 5e-4


def _option(default: Any, help: str) -> Any:
    """A TrainConfig field with its CLI help beside it; ``{default}`` and the recipe constants in
    the help are filled in by :func:`field_help`, so no default is written twice."""
    return field(default=default, metadata={"help": help})


def _python_only(doc: str, default: Any = None) -> Any:
    """A TrainConfig field with no flag of its own (a YAML file or Python sets it); ``doc`` is what
    the reference page says of it."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved into every checkpoint, so a run can be reproduced.

    Each field has a ``resnexus train`` flag of (nearly) the same name, or is set from Python or a
    YAML file (:meth:`from_yaml`, ``train --config``); the reference page lists every field with its
    type, default and flag. ``None`` means "chosen by the recipe" (:func:`complete_config`): the
    built-in recipe without ``data``, else :data:`DEFAULT_RECIPE`, the fine-tuning recipe with
    ``weights``, and the model's own input size.

    Values are checked when the run starts (:func:`validate_config`), before any image is read.

    Attributes:
        data: The images: a folder with one sub-folder per class (or ``train/`` [``val/``]
            [``test/``]), or a CSV file of ``path,label`` rows; ``None``: the built-in digits.
        model: A registered model name (:func:`~resnexus.models.registry.list_models`).
        weights: Initial weights (``"imagenet"``, a tag, a file or a URL); ``None``: from scratch.
        group_by: Keeps each patient's (scene's, animal's) images on one side of every split and fold.
        out: The run directory (default ``runs/<data>-<model>``).
        resume: Continue the run in ``out`` from its ``checkpoints/last.pt``.

    Example:
        ``cross_validate(TrainConfig(data="photos", model="resnet50", weights="imagenet",
        group_by="patient"), folds=5)``: the estimate, then the model trained on every image.
    """

    data: str | None = _option(
        None,
        "folder with one sub-folder per class, or train/ [val/] [test/]; or a CSV file with path,label columns "
        "(paths relative to its folder; more columns allowed, e.g. for --group-by); "
        "omitted: scikit-learn's handwritten digits written as an image folder",
    )
    out: str | None = _option(None, "run directory (default runs/<data>-<model>); never overwritten silently")
    model: str | None = _option(None, "registry name (see `resnexus models`); default {default_model}")
    model_config: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "doc": "overrides of the model's spec row, e.g. {cardinality: 16}; the keys the family takes "
            "are listed when a wrong one is given"
        },
    )
    framework: str = _option(
        "torch",
        "train with PyTorch (default) or Keras' model.fit (needs the keras extra): the same data checks, "
        "splits, reports and run directory (checkpoints/best.keras)",
    )
    keras_backend: str = _option(
        "auto",
        "with --framework keras: the Keras backend (tensorflow, jax, torch); auto: the fastest measured for "
        "the model and device among those installed (torch on a CPU), or KERAS_BACKEND if set",
    )
    weights: str | None = _option(
        None,
        "initial weights: 'imagenet', a tag from `resnexus models --weights`, a file or URL (torchvision, "
        "timm, Keras, resnexus); the classifier is replaced when the classes differ, and the fine-tuning "
        "recipe applies ({finetune_epochs} epochs, lr x {finetune_lr_factor:g}, the weights' input size)",
    )
    weights_dir: str | None = _option(
        None, "folder of downloaded weights files, used without network (default $RESNEXUS_WEIGHTS_DIR)"
    )
    freeze: int = _option(
        0, "with --weights: freeze the stem and the first N stages (BatchNorm statistics too); default {default}"
    )
    epochs: int | None = _option(None, "default {default} (tuned for a few hundred images; use fewer for thousands)")
    batch_size: int | None = _option(None, "default {default} (the global batch with --nproc)")
    lr: float | None = _option(
        None, "peak learning rate (default {adamw_lr:g} for AdamW, {sgd_lr_per_256:g} x batch/256 for SGD)"
    )
    optimizer: str | None = _option(None, "default {default} (sgd: Nesterov momentum 0.9)")
    weight_decay: float | None = _option(
        None, "default {adamw_weight_decay:g} (AdamW) or {sgd_weight_decay:g} (SGD); never on norms and biases"
    )
    warmup_epochs: float | None = _option(None, "epochs of linear warm-up before the cosine decay; default {default:g}")
    label_smoothing: float = _option(0.1, "default {default:g}")
    image_size: int | None = _option(
        None,
        "default {small_data_image_size} for 224-px models trained from scratch, else the model's size; "
        "8 to {max_image_size}",
    )
    crop_fraction: float = _python_only(
        "evaluation: resize to image_size / crop_fraction, then take the centre crop", 0.875
    )
    val_fraction: float = _option(DEFAULT_VAL_FRACTION, "default {default:g}")
    test_fraction: float = _option(DEFAULT_TEST_FRACTION, "default {default:g}")
    group_by: str | None = _option(
        None,
        "keep the images of one group (patient, scene, animal) on one side of every split and fold. 'patient': "
        "the file stem without a trailing _N (a13_1.jpg and a13_2.jpg are patient a13, 17.jpg is 17); the name "
        "of a column, for a CSV that has one; any other value: a regular expression searched in the file name, "
        "the group being its first capture group, else the whole match (e.g. '^(\\w+)-' puts scan12-left.png "
        "and scan12-right.png in group scan12); "
        "default: each image its own group",
    )
    seed: int = _option(0, "default {default}")
    precision: str = _option(
        "auto", "default {default}: bf16 on GPUs (fp16 without bf16) and on CPUs with AMX, else fp32"
    )
    channels_last: bool | None = _python_only(
        "channels-last memory format; None: on for CPUs, and on GPUs when bf16/fp16 is used"
    )
    workers: int | None = _option(None, "DataLoader worker processes (default: from the machine)")
    cache_dir: str | None = _option(
        None,
        "where decoded images are kept between runs (default: $RESNEXUS_HOME/"
        "decoded, else ~/.cache/resnexus/decoded); 'off': decode every run",
    )
    augment: AugmentConfig | None = field(
        default=None,
        metadata={"doc": "crop scale, flips, colour jitter and Random Erasing (AugmentConfig); None: the recipe's"},
    )
    mixup: float = _option(0.0, "Mixup alpha (Zhang et al., 2018 use 0.2 on ImageNet); default {default:g}: off")
    cutmix: float = _option(
        0.0, "CutMix alpha (Yun et al., 2019 use 1.0); default {default:g}: off; both on: each batch picks one"
    )
    ema_decay: float | None = _option(
        None, "evaluate and keep an exponential moving average of the weights with this decay, e.g. 0.999"
    )
    clip_grad_norm: float | None = _option(None, "clip the gradient norm to this")
    early_stopping: int | None = _option(None, "stop after N epochs without a better validation accuracy")
    balance: str = _option(
        "none", "imbalanced data: 'loss' weights the loss by class, 'sampler' draws balanced batches; default {default}"
    )
    tta: bool = _option(False, "validate and test on image + mirror image (flip averaging)")
    select: str = _option(
        "auto",
        "best.pt: 'val' best validation accuracy, 'last' final weights; 'auto' "
        "(default): 'val' with >= {min_val_for_selection} validation images or early stopping, "
        "else 'last'",
    )
    compile: bool = _option(False, "torch.compile the training step (a slow start; no gain on 2 CPU cores, measured)")
    tensorboard: bool = _option(False, "write TensorBoard events to RUN_DIR/tensorboard (needs `tensorboard`)")
    positive_class: str | None = _option(
        None,
        "two classes: the class sensitivity, specificity and the ROC curve are about, named in every report "
        "(default: the class not named like others/normal/negative/healthy/benign/control, else the second in "
        "sorted order)",
    )
    target_sensitivity: float | None = _option(
        None,
        "with --folds, two classes: the decision threshold on the positive class's probability that reaches this "
        "sensitivity on the out-of-fold images, stored in calibration.json; predict / evaluate / serve use it",
    )
    target_specificity: float | None = _option(None, "as --target-sensitivity, for a specificity (give one of them)")
    temperature_scaling: bool = _option(
        True, "with --folds: fit a temperature on the out-of-fold probabilities (--no-temperature-scaling: keep T=1)"
    )
    skip_bad_images: bool = _option(
        False, "train on the readable images instead of refusing to start; the report lists the rest"
    )
    checkpoint_every: float = _option(
        60.0,
        "seconds between resumable checkpoints (default {default:g}; "
        "0: every epoch; also saved at the end and on SIGINT/SIGTERM)",
    )
    progress_every: float = _option(
        30.0,
        "seconds between progress lines within an epoch (step, img/s, ETA) when the output is not a "
        "terminal, e.g. a log file (default {default:g}; 0: after every step); a terminal shows a bar",
    )
    sync_bn: bool = _option(False, "several GPU processes: BatchNorm over the global batch")
    resume: bool = _python_only("continue the run in `out` from checkpoints/last.pt", False)
    overwrite: bool = _option(False, "reuse an existing run directory")
    # False: no progress bar, and train's progress messages go to DEBUG instead of INFO (warnings
    # too); only rank 0 of a multi-process run ever logs at INFO.
    verbose: bool = _python_only("False: no progress bar, and progress messages at DEBUG", True)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """The config a YAML file of TrainConfig fields describes (``train --config``); a misspelt key
        is refused by name, with the known ones, instead of being ignored. Values are checked by
        :func:`validate_config`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields (key: value), got {values!r}")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(map(str, set(values) - known)):
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        if isinstance(values.get("augment"), dict):
            augment_keys = {f.name for f in fields(AugmentConfig)}
            if unknown := sorted(map(str, set(values["augment"]) - augment_keys)):
                raise ValueError(f"{path}: unknown augment keys {unknown}; known: {sorted(augment_keys)}")
            values["augment"] = AugmentConfig(**values["augment"])  # its values: checked by validate_config
        return cls(**values)


def field_help(name: str) -> str:
    """The CLI help of a TrainConfig field, with the defaults it mentions taken from the recipes
    (and the built-in recipe's value, where it sets the field)."""
    spec = {f.name: f for f in fields(TrainConfig)}[name]
    default = DEFAULT_RECIPE.get(name, spec.default)
    value = BUILTIN_RECIPE.get(name)
    builtin = "" if value is None or name == "augment" else f"; built-in digits: {_show(value)}"
    return (
        spec.metadata["help"].format(
            default=default,
            default_model=DEFAULT_MODEL,
            adamw_lr=ADAMW_LR,
            sgd_lr_per_256=SGD_LR_PER_256,
            adamw_weight_decay=ADAMW_WEIGHT_DECAY,
            sgd_weight_decay=SGD_WEIGHT_DECAY,
            small_data_image_size=SMALL_DATA_IMAGE_SIZE,
            max_image_size=MAX_IMAGE_SIZE,
            min_val_for_selection=MIN_VAL_FOR_SELECTION,
            finetune_epochs=FINETUNE_RECIPE["epochs"],
            finetune_lr_factor=FINETUNE_LR_FACTOR,
        )
        + builtin
    )


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- validation: every value checked here, before complete_config fills or creates anything -------
FLAGS = {
    "ema_decay": "--ema",
    "clip_grad_norm": "--clip-grad",
    "temperature_scaling": "--no-temperature-scaling",
}  # where the flag is not the field's name
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
# the values a field accepts; the CLI's --optimizer, --precision, ... offer these
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "adamw"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "select": ("auto", "val", "last"),
    "balance": ("none", "loss", "sampler"),
    "framework": ("torch", "keras"),
    "keras_backend": ("auto", "tensorflow", "jax", "torch"),
}
_CHOICES = CHOICES  # the name it had
# field: (accepted, what is expected); a None value (an unset or switched-off option) is not checked
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, "epochs must be >= 1"),
    "freeze": (lambda v: v >= 0, "must be >= 0 stages (0: train every layer)"),
    "batch_size": (lambda v: v >= 1, "batch size must be >= 1"),
    "image_size": (
        lambda v: 8 <= v <= MAX_IMAGE_SIZE,
        f"the image size >= 8 pixels is required, and <= {MAX_IMAGE_SIZE} (memory grows with its square; "
        "ResNets are trained at 32-600 px)",
    ),
    "lr": (lambda v: v >= 0, "the learning rate must be >= 0 (0: the weights stay as they start)"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "warmup_epochs": (lambda v: v >= 0, "must be >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "crop_fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "val_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "test_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "seed": (lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
    "workers": (lambda v: v >= 0, "must be >= 0 (0: load in the training process)"),
    "mixup": (lambda v: v >= 0, "must be >= 0 (0: off)"),
    "cutmix": (lambda v: v >= 0, "must be >= 0 (0: off)"),
    "ema_decay": (lambda v: 0 < v < 1, "must be in (0, 1), e.g. 0.999"),
    "clip_grad_norm": (lambda v: v > 0, "must be > 0"),
    "early_stopping": (lambda v: v >= 1, "must be >= 1 epoch"),
    "checkpoint_every": (lambda v: v >= 0, "must be >= 0 seconds (0: every epoch)"),
    "progress_every": (lambda v: v >= 0, "must be >= 0 seconds (0: after every step)"),
    "target_sensitivity": (lambda v: 0 < v <= 1, "must be in (0, 1], e.g. 0.95"),
    "target_specificity": (lambda v: 0 < v <= 1, "must be in (0, 1], e.g. 0.95"),
}
_AUGMENT_PROBABILITIES = ("hflip", "vflip", "random_erasing")


def _label(name: str) -> str:
    """``label_smoothing (--label-smoothing)``: the name a YAML file uses and the flag, where there is one."""
    if "help" not in {f.name: f for f in fields(TrainConfig)}[name].metadata:
        return name  # not a CLI option
    return f"{name} ({FLAGS.get(name, '--' + name.replace('_', '-'))})"


def is_whole_number(value: Any) -> bool:
    """An int that is not a bool: ``True`` must not pass as 1 fold, 1 repeat or 1 job."""
    return isinstance(value, int) and not isinstance(value, bool)


def _accepts(kind: type, value: Any) -> bool:
    """``isinstance``, except that a bool is not a number and an int is a float (YAML's ``lr: 1``)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check_type(name: str, hint: Any, value: Any) -> None:
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in members:
        return
    kinds = [typing.get_origin(m) or m for m in members if m is not type(None)]
    if not any(_accepts(kind, value) for kind in kinds):
        expected = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in kinds)
        raise ValueError(f"invalid {_label(name)}: {value!r} is {type(value).__name__}; expected {expected}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"invalid {_label(name)}: {value!r}; expected a finite number")


def _check_augment(augment: AugmentConfig) -> None:
    """The augmentation strengths: numbers, probabilities in [0, 1], a crop scale 0 < low <= high <= 1."""
    for spec in fields(AugmentConfig):
        value = getattr(augment, spec.name)
        if spec.name == "random_resized_crop_scale":
            ok = (
                isinstance(value, (tuple, list))
                and len(value) == 2
                and all(_accepts(float, v) and math.isfinite(v) for v in value)
                and 0 < value[0] <= value[1] <= 1
            )
            if not ok:
                raise ValueError(
                    f"invalid augment.{spec.name}: {value!r}; expected [low, high] with 0 < low <= high <= 1"
                )
            continue
        if not _accepts(float, value) or not math.isfinite(value):
            raise ValueError(f"invalid augment.{spec.name}: {value!r} is {type(value).__name__}; expected a number")
        if spec.name in _AUGMENT_PROBABILITIES and not 0 <= value <= 1:
            raise ValueError(f"invalid augment.{spec.name}: {value!r}; a probability must be in [0, 1]")
        if spec.name == "color_jitter" and value < 0:
            raise ValueError(f"invalid augment.{spec.name}: {value!r}; must be >= 0")


def validate_config(config: TrainConfig) -> None:
    """Refuse a value of the wrong type or out of range, naming the field (and its flag) and the value.

    The one place options are checked: :func:`complete_config` calls it first, so a bad value from
    the CLI, a YAML file or the API fails in a line before any folder is made, instead of as a
    traceback minutes into a run. Unset (None) values are not checked: the defaults fill them.
    """
    hints = typing.get_type_hints(TrainConfig)
    for spec in fields(TrainConfig):
        _check_type(spec.name, hints[spec.name], getattr(config, spec.name))
    for name, choices in _CHOICES.items():
        value = getattr(config, name)
        if value is not None and value not in choices:
            expected = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
            raise ValueError(f"unknown {name} {value!r}: expected {expected}")
    for name, (accepted, expectation) in _RANGES.items():
        value = getattr(config, name)
        if value is not None and not accepted(value):
            raise ValueError(f"invalid {_label(name)}: {value!r}; {expectation}")
    if config.val_fraction + config.test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (some images must be left to train on), "
            f"got {config.val_fraction} + {config.test_fraction}"
        )
    if config.target_sensitivity is not None and config.target_specificity is not None:
        raise ValueError("give one operating point: --target-sensitivity or --target-specificity, not both")
    if config.augment is not None:
        _check_augment(config.augment)
    if config.framework == "keras":
        check_keras_options(config)


def config_warnings(config: TrainConfig) -> list[str]:
    """What a valid but suspect config will do that its user probably did not mean: logged as a
    warning when a run starts and repeated in its reports, never refused."""
    found = []
    if config.warmup_epochs is not None and config.epochs is not None and config.warmup_epochs >= config.epochs:
        found.append(
            f"warm-up epochs {config.warmup_epochs:g} >= epochs {config.epochs}: the learning rate rises for the "
            f"whole run and never reaches its peak{'' if config.lr is None else f' {config.lr:g}'}; "
            "use fewer --warmup-epochs"
        )
    return found


def warn_about_config(config: TrainConfig, loud: bool) -> None:
    """:func:`config_warnings` as warnings when ``loud`` (a run of its own, rank 0), else at DEBUG: a
    cross-validation or comparison says them once for all its runs."""
    for warning in config_warnings(config):
        (logger.warning if loud else logger.debug)(f"warning: {warning}")


# what the Keras path (engine/keras_fit.py) cannot do, with why: refused, never silently ignored
_KERAS_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "freeze": (lambda v: v > 0, "freezing stages is implemented for PyTorch only"),
    "ema_decay": (lambda v: v is not None, "the weight average is implemented for PyTorch only"),
    "balance": (lambda v: v == "loss", "use --balance sampler (class-weighted loss: PyTorch only)"),
    "compile": (lambda v: v, "torch.compile is a PyTorch option"),
    "tensorboard": (lambda v: v, "TensorBoard events are written by the PyTorch path only"),
    "sync_bn": (lambda v: v, "SyncBatchNorm is a PyTorch multi-GPU option"),
    "channels_last": (lambda v: v is not None, "a PyTorch memory-layout option (Keras is always channels-last)"),
    "precision": (lambda v: v in ("bf16", "fp16"), "Keras trains in fp32 here (use --precision fp32 or auto)"),
}


def check_keras_options(config: TrainConfig) -> None:
    """Refuse, in one line naming the option, what ``framework="keras"`` does not support."""
    bad = [
        f"{_label(name)} ({why})" for name, (refused, why) in _KERAS_REFUSED.items() if refused(getattr(config, name))
    ]
    if bad:
        raise ValueError(f"--framework keras does not support {'; '.join(bad)}")


def complete_config(config: TrainConfig) -> TrainConfig:
    """Every unset field filled: the built-in recipe without data, the model's input size, a new run dir."""
    validate_config(config)
    values = asdict(config) | {"augment": config.augment}
    if config.data is None:
        values["data"] = str(digits_folder())
        for key, value in BUILTIN_RECIPE.items():
            if values.get(key) is None:
                values[key] = value
    values["model"] = values["model"] or DEFAULT_MODEL
    entry = get_entry(values["model"])  # unknown names fail here, before any work
    native = entry.input_size[1]
    finetune = values["weights"] is not None
    # published weights by name: their own resolution (an unknown tag fails here, before any work)
    published = find_pretrained(values["model"], values["weights"]) if is_weights_tag(values["weights"]) else None
    if published is not None:
        size = published.preprocessing.input_size
    else:
        size = SMALL_DATA_IMAGE_SIZE if native == 224 and not finetune else native
    size = values["model_config"].get("img_size", size)  # a model built for one size (LeNet) trains at it
    check_freeze(values["freeze"], values["model"], finetune)
    recipe = DEFAULT_RECIPE | (FINETUNE_RECIPE if finetune else {}) | {"image_size": size}
    for key, default in recipe.items():
        if values[key] is None:  # only unset values: a typed 0 was refused by validate_config
            values[key] = default
    sgd = values["optimizer"] == "sgd"
    if values["lr"] is None:
        values["lr"] = SGD_LR_PER_256 * values["batch_size"] / 256 if sgd else ADAMW_LR
        values["lr"] *= FINETUNE_LR_FACTOR if finetune else 1.0
    if values["weight_decay"] is None:
        values["weight_decay"] = SGD_WEIGHT_DECAY if sgd else ADAMW_WEIGHT_DECAY
    values["augment"] = values["augment"] or AugmentConfig()
    check_model_input(values["model"], values["model_config"], values["image_size"])
    if values["workers"] is None:
        values["workers"] = 0 if (torch.get_num_threads() <= 2) else min(8, torch.get_num_threads() // 2)
    if values["out"] is None:
        data = Path(values["data"])
        stem = data.stem if data.suffix.lower() == ".csv" else data.name
        values["out"] = str(unused_path(Path("runs") / f"{stem}-{values['model']}"))
    return TrainConfig(**values | absolute_paths(values))


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """The path fields of ``values`` made absolute, so that a saved config (and ``--resume``) means
    the same folders from any working directory; ``weights`` only where it names an existing file
    (not a tag or URL), ``cache_dir`` unless 'off'."""
    paths = {key: values.get(key) for key in ("data", "out", "weights_dir")}
    if values.get("cache_dir") not in (None, "off"):
        paths["cache_dir"] = values["cache_dir"]
    if values.get("weights") is not None and Path(values["weights"]).expanduser().is_file():
        paths["weights"] = values["weights"]
    return {key: str(Path(value).expanduser().resolve()) for key, value in paths.items() if value is not None}


def unused_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... : the first that does not exist (runs are never overwritten)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def checkpoint_selection(config: TrainConfig, n_val: int) -> str:
    """ "val" or "last": what best.pt holds. "auto" trusts a validation set of at least
    MIN_VAL_FOR_SELECTION images; early stopping needs validation-based selection."""
    if config.select not in ("auto", "val", "last"):
        raise ValueError(f"unknown select {config.select!r}: expected 'auto', 'val' or 'last'")
    if config.select != "auto":
        return config.select
    return "val" if n_val >= MIN_VAL_FOR_SELECTION or config.early_stopping else "last"
