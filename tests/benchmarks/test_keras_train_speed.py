"""benchmarks/keras_train_speed.py: the figures it reads from history.csv, the per-round ratios, and
one real pair of tiny runs through ``resnexus train`` on both frameworks."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark, noise_folder


def write_history(run_dir, seconds, last_ips):
    run_dir.mkdir(parents=True)
    rows = ["epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds,images_per_second"]
    for epoch, s in enumerate(seconds, 1):
        ips = last_ips if epoch == len(seconds) else 1.0
        rows.append(f"{epoch},0.1,0.7,0.5,,,{s},{ips}")
    (run_dir / "history.csv").write_text("\n".join(rows) + "\n")


def test_start_up_is_the_first_epoch_beyond_the_later_ones_and_the_last_speed_is_read(tmp_path):
    bench = load_benchmark("keras_train_speed")
    write_history(tmp_path / "a", [30.0, 10.0, 12.0, 11.0], 9.5)
    figures = bench.read_history(tmp_path / "a")
    assert figures["startup_seconds"] == pytest.approx(30.0 - 11.0)
    assert figures["last_images_per_second"] == 9.5
    assert figures["epoch_seconds"] == [30.0, 10.0, 12.0, 11.0]
    write_history(tmp_path / "one", [7.0], 3.0)
    assert bench.read_history(tmp_path / "one")["startup_seconds"] == 0.0
    with pytest.raises(FileNotFoundError, match=r"nowhere/history\.csv"):
        bench.read_history(tmp_path / "nowhere")


def test_ratios_pair_the_sides_of_each_round_and_skip_an_unpaired_one():
    bench = load_benchmark("keras_train_speed")
    runs = [
        {"round": 1, "framework": "torch", "last_images_per_second": 10.0, "startup_seconds": 2.0},
        {"round": 1, "framework": "keras", "last_images_per_second": 8.0, "startup_seconds": 6.0},
        {"round": 2, "framework": "keras", "last_images_per_second": 9.0, "startup_seconds": 4.0},
        {"round": 2, "framework": "torch", "last_images_per_second": 10.0, "startup_seconds": 3.0},
        {"round": 3, "framework": "torch", "last_images_per_second": 50.0, "startup_seconds": 1.0},
    ]
    summary = bench.summarise(runs)
    assert summary["ratios"] == pytest.approx([0.8, 0.9])
    assert summary["median_ratio"] == pytest.approx(0.85)
    assert summary["median_startup_seconds"] == {"torch": 2.0, "keras": 5.0}


@pytest.mark.slow  # two real trainings, one of them Keras (about a minute on 2 cores)
def test_a_pair_of_tiny_runs_gives_a_ratio_and_writes_it(tmp_path, capsys):
    pytest.importorskip("keras")
    data = noise_folder(tmp_path / "data", per_class=6, size=16)
    out = tmp_path / "runs"
    args = ["--data", str(data), "--out", str(out), "--model", "resnet20_cifar", "--image-size", "16"]
    summary = load_benchmark("keras_train_speed").main(
        [*args, "--epochs", "2", "--rounds", "1", "--", "--batch-size", "4"]
    )
    assert len(summary["ratios"]) == 1 and summary["ratios"][0] > 0
    written = json.loads((out / "keras_train_speed.json").read_text())
    assert {r["framework"] for r in written["runs"]} == {"torch", "keras"}
    assert (out / "round1_keras" / "checkpoints" / "best.keras").is_file()
    assert (out / "round1_torch" / "checkpoints" / "best.pt").is_file()
    assert "Keras / PyTorch, last epoch's images/s" in capsys.readouterr().out
