"""Every option is checked in one place (engine/config.py validate_config) before anything is created:
a bad value from the CLI, a YAML file or the API is one line naming the field, the value and what
was expected, and no run directory is left behind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from resnexus.cli import main
from resnexus.data import AugmentConfig
from resnexus.engine import TrainConfig, compare, cross_validate, train
from resnexus.engine.config import complete_config, validate_config
from tests.helpers import noise_folder

# small enough that, were a bad value accepted, the run would finish in seconds and the test fail
TINY_RUN = ["--model", "resnet20_cifar", "--image-size", "8", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture()
def data(tmp_path) -> Path:
    return noise_folder(tmp_path / "data")


def _train_cli(data: Path, out: Path, *argv: str, capsys) -> str:
    """Run ``resnexus train``, assert the one-line error and exit status 2, return the line."""
    status = main(["train", "--data", str(data), "--out", str(out), "--precision", "fp32", *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("resnexus train: error: ") and err.count("\n") == 1, err
    assert not out.exists(), "a refused option left a run directory behind"
    return err.strip()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--label-smoothing", "2"], "invalid label_smoothing (--label-smoothing): 2.0; must be in [0, 1)"),
        (["--label-smoothing", "1"], "invalid label_smoothing (--label-smoothing): 1.0; must be in [0, 1)"),
        (["--mixup", "-0.2"], "invalid mixup (--mixup): -0.2; must be >= 0 (0: off)"),
        (["--cutmix", "-1"], "invalid cutmix (--cutmix): -1.0; must be >= 0 (0: off)"),
        (["--checkpoint-every", "-5"], "invalid checkpoint_every (--checkpoint-every): -5.0; must be >= 0 seconds"),
        (["--val-fraction", "-0.1"], "invalid val_fraction (--val-fraction): -0.1; must be in [0, 1)"),
        (["--test-fraction", "1"], "invalid test_fraction (--test-fraction): 1.0; must be in [0, 1)"),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], "val_fraction + test_fraction must be < 1"),
        (["--ema", "1"], "invalid ema_decay (--ema): 1.0; must be in (0, 1)"),
        (["--ema", "0"], "invalid ema_decay (--ema): 0.0; must be in (0, 1)"),
        (["--clip-grad", "0"], "invalid clip_grad_norm (--clip-grad): 0.0; must be > 0"),
        (["--clip-grad", "-1"], "invalid clip_grad_norm (--clip-grad): -1.0; must be > 0"),
        (["--early-stopping", "0"], "invalid early_stopping (--early-stopping): 0; must be >= 1 epoch"),
        (["--workers", "-1"], "invalid workers (--workers): -1; must be >= 0"),
        (["--lr", "nan"], "invalid lr (--lr): nan; expected a finite number"),
        (["--lr", "-0.1"], "invalid lr (--lr): -0.1; the learning rate must be >= 0"),
        (["--weight-decay", "-0.1"], "invalid weight_decay (--weight-decay): -0.1; must be >= 0"),
        (["--warmup-epochs", "-1"], "invalid warmup_epochs (--warmup-epochs): -1.0; must be >= 0"),
        (["--seed", "-1"], "invalid seed (--seed): -1; must be in [0, 2**32)"),
        (["--epochs", "0"], "invalid epochs (--epochs): 0; epochs must be >= 1"),
    ],
)
def test_a_bad_option_is_one_line_and_creates_nothing(argv, message, data, tmp_path, capsys):
    line = _train_cli(data, tmp_path / "run", *TINY_RUN, *argv, capsys=capsys)
    assert message in line


# the YAML tests' tiny recipe; the value under test comes after it and wins (PyYAML keeps the last key)
TINY_YAML = "model: resnet20_cifar\nimage_size: 8\nepochs: 1\nbatch_size: 4\n"


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text if text.startswith("-") else TINY_YAML + text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: two\n", "invalid epochs (--epochs): 'two' is str; expected an integer"),
        ("epochs: 1.5\n", "invalid epochs (--epochs): 1.5 is float; expected an integer"),
        ("lr: fast\n", "invalid lr (--lr): 'fast' is str; expected a number"),
        ("tta: 'yes'\n", "invalid tta (--tta): 'yes' is str; expected true or false"),
        ("label_smoothing: 2\n", "invalid label_smoothing (--label-smoothing): 2; must be in [0, 1)"),
        ("mixup: -1\n", "invalid mixup (--mixup): -1; must be >= 0"),
        ("model_config: 3\n", "invalid model_config: 3 is int; expected a mapping"),
        ("balance: oversample\n", "unknown balance 'oversample': expected 'none', 'loss' or 'sampler'"),
        ("augment: {hflip: 2}\n", "invalid augment.hflip: 2; a probability must be in [0, 1]"),
        ("augment: {rotation: lots}\n", "invalid augment.rotation: 'lots' is str; expected a number"),
        ("augment: {random_resized_crop_scale: [0.9, 0.5]}\n", "invalid augment.random_resized_crop_scale"),
        ("augment: {flip: 0.5}\n", "unknown augment keys ['flip']"),
        ("augment: 3\n", "invalid augment: 3 is int; expected AugmentConfig"),
        ("epochs: [1\n", "not valid YAML"),
        ("- epochs\n- 2\n", "expected a mapping of TrainConfig fields"),
    ],
)
def test_a_bad_yaml_value_names_the_field_the_value_and_the_type(text, message, data, tmp_path, capsys):
    line = _train_cli(data, tmp_path / "run", "--config", str(_yaml(tmp_path, text)), capsys=capsys)
    assert message in line


def test_a_typed_flag_overrides_a_bad_yaml_value(data, tmp_path, capsys):
    """The flag wins over the file, so the file's bad value is never used and not refused."""
    recipe = _yaml(tmp_path, "label_smoothing: 2\n")
    fixed = ["--config", str(recipe), "--label-smoothing", "0.1", "--val-fraction", "0", "--test-fraction", "0.25"]
    status = main(
        ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--precision", "fp32", *TINY_RUN, *fixed]
    )
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def _api_config(data: Path, out: Path, **kw) -> TrainConfig:
    tiny = dict(model="resnet20_cifar", model_config={"layers": (1, 1, 1)}, epochs=1, batch_size=4, image_size=8)
    return TrainConfig(data=str(data), out=str(out), precision="fp32", verbose=False, **(tiny | kw))


def test_train_cross_validate_and_compare_refuse_before_creating_anything(data, tmp_path):
    out = tmp_path / "run"
    bad = _api_config(data, out, mixup=-0.5)
    with pytest.raises(ValueError, match=r"invalid mixup \(--mixup\): -0.5"):
        train(bad)
    with pytest.raises(ValueError, match=r"invalid mixup \(--mixup\): -0.5"):
        cross_validate(bad, folds=2)
    with pytest.raises(ValueError, match=r"invalid mixup \(--mixup\): -0.5"):
        compare(["resnet20_cifar", "lenet"], replace(bad, model=None, model_config={}), out)
    assert not out.exists()


def test_a_value_of_the_wrong_type_from_the_api_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match=r"invalid epochs \(--epochs\): '2' is str; expected an integer"):
        complete_config(_api_config(data, tmp_path / "run", epochs="2"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"invalid crop_fraction: 0.0; must be in \(0, 1\]"):
        complete_config(_api_config(data, tmp_path / "run", crop_fraction=0.0))
    with pytest.raises(ValueError, match=r"invalid verbose: 1 is int; expected true or false"):
        complete_config(replace(_api_config(data, tmp_path / "run"), verbose=1))  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_the_edges_of_every_range_are_accepted(data, tmp_path):
    config = _api_config(
        data,
        tmp_path / "run",
        lr=1,  # an int where a float is expected, as YAML writes "lr: 1"
        weight_decay=0.0,
        warmup_epochs=0.0,
        label_smoothing=0.0,
        val_fraction=0.0,
        test_fraction=0.0,
        seed=2**32 - 1,
        workers=0,
        mixup=0.0,
        cutmix=0.0,
        ema_decay=0.999,
        clip_grad_norm=1e-3,
        early_stopping=1,
        checkpoint_every=0.0,
        crop_fraction=1.0,
        augment=AugmentConfig(random_resized_crop_scale=(1.0, 1.0), hflip=1.0, vflip=0.0, random_erasing=0.0),
    )
    validate_config(config)
    assert complete_config(config).lr == 1
    validate_config(TrainConfig())  # every default, unset fields included


def test_a_bad_option_under_nproc_is_one_line_before_torchrun_starts(data, tmp_path, capsys, monkeypatch):
    """``--nproc 2`` checks the options in this process: one line, not one traceback per process."""
    import resnexus.cli as cli

    launched = []
    monkeypatch.setattr(cli.training, "_launch_torchrun", lambda *a: launched.append(a) or 0)
    line = _train_cli(data, tmp_path / "run", "--nproc", "2", "--label-smoothing", "2", *TINY_RUN, capsys=capsys)
    assert "label_smoothing" in line or "label-smoothing" in line
    assert launched == []


# -- the model: its options and the image size it can take, checked on the meta device before training --
@pytest.mark.parametrize(
    ("model", "size", "message"),
    [
        (
            "lenet",
            "32",
            "lenet is built for 256x256 images only, not --image-size 32: use --image-size 256, "
            "or model_config {img_size: 32} to build it for 32 px",
        ),
        ("densenet121", "16", "densenet121 cannot take 16x16 images (Given input size: (512x1x1)"),
        ("densenet121", "16", "it needs at least 29 px"),
        ("fractalnet20", "8", "fractalnet20 cannot take 8x8 images"),
        ("fractalnet20", "31", "it needs at least 32 px"),
        ("resnet20_cifar", "100000", "invalid image_size (--image-size): 100000; the image size >= 8 pixels is "),
        ("resnet20_cifar", "2049", "and <= 2048 (memory grows with its square"),
    ],
)
def test_a_model_that_cannot_take_the_image_size_is_one_line(model, size, message, data, tmp_path, capsys):
    line = _train_cli(data, tmp_path / "run", "--model", model, "--image-size", size, "--epochs", "1", capsys=capsys)
    assert message in line


RESNET_OPTIONS = (
    "avg_down, base_width, block, block_args, block_form, cardinality, layers, stage_planes, stem, stem_width, "
    "zero_init_last, zero_pad_shortcut"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model_config: {depth: 3}\n",
            f"model_config: resnet20_cifar (resnet) has no option depth; its options: {RESNET_OPTIONS}",
        ),
        (
            "model: densenet121\nmodel_config: {growth: 12, drop: 0.1}\n",
            "densenet121 (densenet) has no option drop, growth; its options: block_config, bn_eps, bn_size, compression, drop_rate, growth_rate,",
        ),
        (
            "model: lenet\nmodel_config: {width: 2}\n",
            "model_config: lenet (lenet) has no option width; its options: img_size",
        ),
        (
            "model_config: {num_classes: 7}\n",
            "model_config cannot set num_classes (it is the number of classes in the data); remove it",
        ),
        ("model_config: {in_chans: 1}\n", "model_config cannot set in_chans (images are read as 3-channel RGB)"),
        ("model_config: {layers: abc}\n", "model_config {'layers': 'abc'} cannot build resnet20_cifar: TypeError: "),
        (
            "model: lenet\nimage_size: 8\nmodel_config: {img_size: 8}\n",
            "cannot build lenet: ValueError: img_size 8 is too small for LeNet",
        ),
    ],
)
def test_a_bad_model_config_key_or_value_names_the_allowed_keys(text, message, data, tmp_path, capsys):
    line = _train_cli(data, tmp_path / "run", "--config", str(_yaml(tmp_path, text)), capsys=capsys)
    assert message in line


def test_a_model_built_for_the_image_size_is_accepted(data, tmp_path):
    """LeNet built for 32 px trains at 32 px, the size its model_config sets when --image-size is not given."""
    config = _api_config(data, tmp_path / "run", model="lenet", model_config={"img_size": 32}, image_size=None)
    assert complete_config(config).image_size == 32
    for model, size in (("densenet121", 29), ("fractalnet20", 32), ("resnet20_cifar", 8), ("resnet50v2", 8)):
        assert complete_config(_api_config(data, tmp_path / "run", model=model, model_config={}, image_size=size))
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_is_one_line_before_training(data, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    status = main(["train", "--data", str(data), "--out", str(existing), *TINY_RUN])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"--out {existing} is a file; a resnexus run is a folder: give a folder name" in err
    assert existing.read_text() == "mine"
