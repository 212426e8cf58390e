"""The pieces of the training loop: the resumable state, what last.pt holds, and what a run logs."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from resnexus.engine import TrainConfig, load_checkpoint, train
from resnexus.engine.fit import RunState
from resnexus.engine.inference import class_probabilities, predict_loader
from tests.helpers import bright_and_dark_folder

RESUME_KEYS = {
    "model_state",
    "optimizer",
    "scheduler",
    "scaler",
    "best_score",
    "best_epoch",
    "epoch",
    "history",
    "seconds",  # the run's time so far: a resumed run's training time counts every session
}


def _state(seed: int, ema: bool = True) -> RunState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    average = torch.optim.swa_utils.AveragedModel(model, use_buffers=True) if ema else None
    return RunState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), average)


def test_a_new_run_state_starts_before_the_first_epoch():
    state = _state(0)
    assert state.epoch == 0 and state.history == [] and state.partial is None
    assert state.best_score == [-math.inf, -math.inf] and state.best_epoch == 0
    assert state.eval_model is state.ema.module and _state(0, ema=False).eval_model is not None


def test_run_state_round_trip_restores_everything_resuming_needs():
    state = _state(0)
    state.model(torch.randn(8, 3)).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update_parameters(state.model)
    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.4, "val_accuracy": 0.8}
    assert state.end_epoch(row, "val", "val")
    state.partial = {"step": 3, "seen": 12, "loss_sum": 1.5, "correct": 9.0, "rng": torch.get_rng_state()}
    saved = state.state_dict()
    assert set(saved) == RESUME_KEYS | {"ema", "partial"}

    restored = _state(1)
    restored.load_state_dict(saved)
    assert restored.epoch == 1 and restored.best_epoch == 1 and restored.best_score == [0.8, -0.4]
    assert restored.history == [row] and restored.partial["step"] == 3
    assert restored.earlier_seconds == saved["seconds"] > 0 and restored.seconds() > saved["seconds"]
    assert restored.scheduler.state_dict() == state.scheduler.state_dict()
    assert restored.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        state.optimizer.state_dict()["state"][0]["momentum_buffer"]
    )
    for a, b in zip(restored.model.state_dict().values(), state.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(restored.ema.state_dict().values(), state.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_selection_prefers_accuracy_then_lower_loss():
    state = _state(0, ema=False)
    rows = [(0.8, 0.5), (0.8, 0.4), (0.7, 0.1), (0.8, 0.45)]
    improved = [
        state.end_epoch({"epoch": epoch, "val_accuracy": accuracy, "val_loss": loss}, "val", "val")
        for epoch, (accuracy, loss) in enumerate(rows, 1)
    ]
    assert improved == [True, True, False, False] and state.best_epoch == 2 and state.epoch == 4
    assert state.end_epoch({"epoch": 5, "val_accuracy": 0.0, "val_loss": 9.0}, "val", "last")  # "last": always


def test_last_pt_is_the_weights_checkpoint_plus_the_run_state(tmp_path, caplog):
    data = bright_and_dark_folder(tmp_path / "data", per_class=8, size=16)
    config = TrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        image_size=16,
        batch_size=8,
        epochs=2,
        precision="fp32",
        workers=0,
        verbose=False,
        checkpoint_every=0,
    )
    with caplog.at_level(logging.DEBUG, logger="resnexus"):
        train(config)
    quiet = [r for r in caplog.records if r.name.startswith("resnexus.engine") and r.levelno >= logging.INFO]
    assert quiet == []  # verbose=False: progress goes to DEBUG only
    assert any(r.getMessage().startswith("epoch   2/2") for r in caplog.records)
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert set(last) == set(best) | RESUME_KEYS | {"data"}  # no "partial": the run finished
    assert last["data"]["images"] == 16 and len(last["data"]["sha256"]) == 64  # the fingerprint of every image
    assert last["epoch"] == 2 and len(last["history"]) == 2 and last["best_epoch"] == best["epoch"]


def test_training_and_inference_share_the_probability_code():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    images = torch.randn(4, 3, 2, 2)
    loader = [(images, torch.tensor([0, 1, 2, 0]))]
    y, probs, loss = predict_loader(model, loader, torch.device("cpu"), flip_tta=True)
    with torch.no_grad():
        expected = class_probabilities(model, images, flip_tta=True)
    assert y.tolist() == [0, 1, 2, 0] and torch.allclose(torch.from_numpy(probs), expected)
    assert loss > 0


def _averaged_after(trajectory: list[float], decay: float) -> tuple[float, int]:
    """The EMA of a one-weight model (plus its BatchNorm counter) that took these values in turn."""
    from resnexus.engine.fit import _make_ema

    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    ema = _make_ema(model, decay)
    for step, value in enumerate(trajectory, 1):
        model[0].weight.data.fill_(value)
        model[1].num_batches_tracked.fill_(step)
        ema.update_parameters(model)
    return ema.module[0].weight.item(), int(ema.module[1].num_batches_tracked)


def test_ema_warms_up_so_a_short_run_does_not_average_in_its_first_weights():
    # weights that go from 0 to 1 over 320 steps (40 epochs of 120 photos in batches of 16)
    ramp = [step / 320 for step in range(321)]
    averaged, counter = _averaged_after(ramp, decay=0.999)
    # a plain EMA (0.999 ** 320 = 0.73 of its weight on the first steps) would sit at 0.14 here;
    # with the warm-up it follows the recent weights: after n updates the decay is (1 + n) / (10 + n)
    assert averaged > 0.85  # about 35 steps behind the last weight (1.0)
    expected = 0.0  # the first update copies, then each blends in the new value with the warm-up decay
    for n, value in enumerate(ramp[1:], 1):
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    assert averaged == pytest.approx(expected, rel=1e-5)
    assert 0 < counter <= 320  # integer buffers are averaged too, and stay integers


def test_ema_uses_the_requested_decay_once_there_are_enough_steps():
    steps = 5000  # (1 + n) / (10 + n) passes 0.99 at n = 890
    constant_then_jump = [0.0] * steps + [1.0]
    averaged, _ = _averaged_after(constant_then_jump, decay=0.99)
    assert averaged == pytest.approx(0.01, rel=1e-5)  # one update at decay 0.99 from 0 towards 1
