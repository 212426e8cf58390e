"""Training options: resume, early stopping, EMA, Mixup/CutMix, class-balanced loss."""

from __future__ import annotations

import copy

import pytest
import torch

from resnexus.data import scan_folder
from resnexus.engine import TrainConfig, load_checkpoint, train
from resnexus.engine import fit as fit_module
from resnexus.engine import run as run_module
from resnexus.engine.fit import _class_weights
from resnexus.engine.resume import resume_config

from .test_train import TINY, _make_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("opts") / "halves")


def _config(data, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config=TINY,
        epochs=4,
        batch_size=8,
        lr=0.05,
        optimizer="sgd",
        image_size=16,
        val_fraction=0.2,
        test_fraction=0.25,
        verbose=False,
        precision="fp32",
        checkpoint_every=0.0,
    )
    return TrainConfig(**(base | kw))


def test_resume_after_interruption_ends_with_the_same_weights(data, tmp_path, monkeypatch):
    full = train(_config(data, tmp_path / "full"))
    calls = {"n": 0}
    real_write = run_module.write_history

    def crash_after_second_epoch(history, path):
        real_write(history, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the process were stopped after epoch 2's checkpoints

    monkeypatch.setattr(run_module, "write_history", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data, tmp_path / "cut"))
    monkeypatch.setattr(run_module, "write_history", real_write)
    assert load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["epoch"] == 2

    config = resume_config(tmp_path / "cut")
    assert config.resume and config.model_config == {"layers": (1, 1, 1)}
    resumed = train(config)
    assert [round(h["train_loss"], 10) for h in resumed.history] == [round(h["train_loss"], 10) for h in full.history]
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]


def test_early_stopping_ends_the_run(data, tmp_path):
    result = train(_config(data, tmp_path / "es", epochs=6, lr=0.0, warmup_epochs=0.0, early_stopping=2))
    # with a zero learning rate nothing improves after the first epoch
    assert len(result.history) == 3 and result.best_epoch == 1


def test_ema_weights_are_what_is_saved_and_evaluated(data, tmp_path):
    train(_config(data, tmp_path / "ema", epochs=2, ema_decay=0.9))
    last = load_checkpoint(tmp_path / "ema/checkpoints/last.pt")
    assert last["ema"]["n_averaged"].item() > 0
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(last["state_dict"][k], averaged[k]) for k in last["state_dict"])
    key = "conv1.weight"
    assert not torch.equal(last["state_dict"][key], last["model_state"][key])


def test_mixup_and_cutmix_train_on_soft_targets(data, tmp_path):
    plain = train(_config(data, tmp_path / "plain", epochs=1))
    mixed = train(_config(data, tmp_path / "mixed", epochs=1, mixup=0.2, cutmix=1.0))
    assert mixed.history[0]["train_loss"] != plain.history[0]["train_loss"]
    assert load_checkpoint(tmp_path / "mixed/checkpoints/best.pt")["config"]["cutmix"] == 1.0


def test_class_weights_are_inverse_frequency(data):
    samples = scan_folder(data)
    samples = samples.subset(list(range(16)) + list(range(16, 20)))  # 16 of class 0, 4 of class 1
    weights = _class_weights(samples, torch.device("cpu"))
    assert weights.tolist() == pytest.approx([20 / (2 * 16), 20 / (2 * 4)])


def test_unknown_balance_is_rejected(data, tmp_path):
    with pytest.raises(ValueError, match="unknown balance 'oversample'"):
        train(_config(data, tmp_path / "bad", balance="oversample"))


def test_cli_config_file_with_flag_override_and_resume(data, tmp_path, capsys):
    from resnexus.cli import main

    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"data: {data}\nmodel: resnet20_cifar\nmodel_config: {{layers: [1, 1, 1]}}\nepochs: 1\nbatch_size: 8\n"
        "image_size: 16\nprecision: fp32\naugment: {hflip: 0.0, random_erasing: 0.0}\n"
    )
    out = tmp_path / "yaml-run"
    assert main(["train", "--config", str(config), "--epochs", "2", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoints/last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["augment"]["hflip"] == 0.0  # flag beat the file
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err  # the run directory is not overwritten
    assert main(["train", "--resume", str(out)]) == 0  # a finished run: nothing left to do
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 2
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown keys ['epochz']" in capsys.readouterr().err


def test_positive_class_reaches_metrics_and_checkpoint(data, tmp_path):
    from .test_train import CLASSES

    result = train(_config(data, tmp_path / "pos", epochs=1, positive_class=CLASSES[0]))
    assert result.metrics["positive_class"] == CLASSES[0]
    assert load_checkpoint(tmp_path / "pos/checkpoints/best.pt")["positive_class"] == CLASSES[0]
    with pytest.raises(ValueError, match="is not one of the classes"):
        train(_config(data, tmp_path / "pos2", epochs=1, positive_class="cats"))


def test_progress_bar_on_a_terminal_only(data, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(_config(data, tmp_path / "tty", epochs=1, verbose=True))
    shown = terminal.getvalue()
    assert "epoch 1/1" in shown and "img/s" in shown and "/16 [" in shown  # 2 full batches of 8 images


def test_balanced_sampler_trains(data, tmp_path):
    result = train(_config(data, tmp_path / "sampled", epochs=1, balance="sampler"))
    assert load_checkpoint(tmp_path / "sampled/checkpoints/best.pt")["config"]["balance"] == "sampler"
    assert 0 <= result.history[0]["train_accuracy"] <= 1


def test_flip_tta_averages_the_image_and_its_mirror(data, tmp_path):
    from resnexus.data import UnlabeledDataset, eval_transform, scan_unlabeled
    from resnexus.engine import evaluate, model_from_checkpoint, predict

    result = train(_config(data, tmp_path / "tta", epochs=1, tta=True))
    assert result.metrics["split"] == "test"
    ckpt_path = tmp_path / "tta/checkpoints/best.pt"
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    paths = scan_unlabeled(data)
    dataset = UnlabeledDataset(
        paths, eval_transform(16, tuple(ckpt["mean"]), tuple(ckpt["std"]), ckpt["crop_fraction"])
    )
    images = torch.stack([dataset[i][0] for i in range(len(paths))])
    with torch.no_grad():
        expected = 0.5 * (model(images).softmax(1) + model(images.flip(-1)).softmax(1))
        plain = model(images).softmax(1)
    assert not torch.allclose(expected, plain, atol=1e-4)  # the mirror really changes the answer
    rows = predict(ckpt_path, data, tmp_path / "p.csv", flip_tta=True).read_text().splitlines()[1:]
    got = torch.tensor([[float(v) for v in row.split(",")[-2:]] for row in rows])
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    metrics = evaluate(ckpt_path, data, flip_tta=True)
    assert metrics["flip_tta"] is True
    assert metrics["accuracy"] == pytest.approx(
        float((expected.argmax(1) == torch.tensor(scan_folder(data).labels)).float().mean())
    )


def test_train_and_evaluate_from_a_csv_with_a_group_column(data, tmp_path):
    from resnexus.engine import evaluate

    samples = scan_folder(data)
    lines = ["path,label,patient"] + [
        f"{p.relative_to(data).as_posix()},{samples.class_names[y]},p{i // 2}"  # two photos per patient
        for i, (p, y) in enumerate(zip(samples.paths, samples.labels))
    ]
    listing = data / "labels.csv"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        result = train(_config(listing, tmp_path / "csv", epochs=1, group_by="patient"))
        metrics = evaluate(tmp_path / "csv/checkpoints/best.pt", listing)
    finally:
        listing.unlink()
    assert result.metrics["n"] == 8 and metrics["n"] == 32
    assert load_checkpoint(tmp_path / "csv/checkpoints/best.pt")["class_names"] == samples.class_names


def test_tensorboard_events_hold_the_history(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(_config(data, tmp_path / "tb", epochs=2, tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "test/accuracy"} <= tags
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(h["epoch"], pytest.approx(h["train_loss"], rel=1e-6)) for h in result.history]
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(result.metrics["accuracy"], rel=1e-6)


@pytest.mark.slow
def test_compiled_training_matches_eager(data, tmp_path):
    eager = train(_config(data, tmp_path / "eager", epochs=1, lr=0.01))
    compiled = train(_config(data, tmp_path / "compiled", epochs=1, lr=0.01, compile=True))
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-3)
    keys = load_checkpoint(tmp_path / "compiled/checkpoints/best.pt")["state_dict"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys)  # checkpoints keep the plain model's names


def test_small_validation_sets_keep_the_final_weights(data, tmp_path):
    auto = train(_config(data, tmp_path / "auto", epochs=3))  # 6 validation images: too few to choose by
    best, last = (load_checkpoint(tmp_path / f"auto/checkpoints/{n}.pt") for n in ("best", "last"))
    assert auto.best_epoch == 3 and best["epoch"] == 3
    assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])
    chosen = train(_config(data, tmp_path / "val", epochs=3, select="val"))
    scores = [(h["val_accuracy"], -h["val_loss"]) for h in chosen.history]
    assert chosen.best_epoch == 1 + scores.index(max(scores))  # best accuracy, ties to the lower loss
    with pytest.raises(ValueError, match="unknown select 'best'"):
        train(_config(data, tmp_path / "bad", select="best"))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_is_fused_and_decays_only_weights(optimizer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2)
    )
    reference_model, initial = copy.deepcopy(model), copy.deepcopy(model)
    fused = fit_module._make_optimizer(model, TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.01))
    assert all(group["fused"] for group in fused.param_groups)
    decayed = {id(p) for p in fused.param_groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert fused.param_groups[0]["weight_decay"] == 0.01 and fused.param_groups[1]["weight_decay"] == 0.0
    # the fused kernels make the updates of PyTorch's plain for-loop implementation
    groups = [
        {"params": [p for p in reference_model.parameters() if p.ndim > 1], "weight_decay": 0.01},
        {"params": [p for p in reference_model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    extra = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    reference = type(fused)(groups, lr=0.1, foreach=False, **extra)
    for step in range(3):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, fused), (reference_model, reference)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.allclose(model[0].weight, initial[0].weight, atol=1e-3)  # the steps did change the weights


def test_decoded_images_are_cached_on_disk_for_the_next_run(data, tmp_path, monkeypatch):
    from resnexus.data import dataset as dataset_module

    cache = tmp_path / "cache"
    # batch 9: 17 training images make batches of 9 and 8, none dropped, so every image is read
    first = train(_config(data, tmp_path / "first", epochs=1, batch_size=9, cache_dir=str(cache)))
    n_images = sum(1 for p in data.rglob("*.png"))
    assert len(list(cache.rglob("*.npy"))) == n_images == 32  # train, val and test images, once each

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dataset_module, "decode_image_bytes", no_decoding)
    second = train(_config(data, tmp_path / "second", epochs=1, batch_size=9, cache_dir=str(cache)))
    assert second.metrics["accuracy"] == first.metrics["accuracy"]
    with pytest.raises(AssertionError, match="decoded although cached"):  # "off": every run decodes
        train(_config(data, tmp_path / "third", epochs=1, batch_size=9, cache_dir="off"))


def test_sgd_under_fp16_loss_scaling_survives_a_skipped_first_step():
    """GradScaler skips a step whose scaled gradients overflow; fused SGD skipped its momentum's
    initialisation with it and the next step made the weights NaN, so it is not fused then."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    reference_model = copy.deepcopy(model)
    config = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0)
    optimizer = fit_module._make_optimizer(model, config, loss_scaling=True)
    assert not any(group["fused"] for group in optimizer.param_groups)
    reference = torch.optim.SGD(reference_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for step, factor in enumerate((1e36, 1.0, 1.0)):  # the first step overflows and is skipped
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        scaler.scale(model(x).square().sum() * factor).backward()
        scaler.step(optimizer)
        scaler.update()
        if step > 0:  # the reference never saw the overflowing step
            reference.zero_grad()
            reference_model(x).square().sum().backward()
            reference.step()
    assert scaler.get_scale() == 2.0**15
    for p, q in zip(model.parameters(), reference_model.parameters()):
        assert torch.isfinite(p).all() and torch.allclose(p, q, atol=1e-5)
