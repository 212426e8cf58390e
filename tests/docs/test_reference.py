"""The generated reference pages say something true about every option."""

from __future__ import annotations

import runpy
from dataclasses import fields
from pathlib import Path

from resnexus.engine.config import TrainConfig

GEN_PAGES = Path(__file__).resolve().parents[2] / "docs" / "gen_pages.py"


def _generators() -> dict:
    # run_name other than mkdocs-gen-files' "<run_path>": define the generators, write no page
    return runpy.run_path(str(GEN_PAGES), run_name="gen_pages")["GENERATORS"]


def test_every_train_config_field_is_described_with_its_flag():
    table = _generators()["train-config"]().splitlines()
    rows = {line.split("|")[1].strip().strip("`"): line for line in table[2:]}
    assert list(rows) == [f.name for f in fields(TrainConfig)]
    for name, row in rows.items():
        cells = [cell.strip() for cell in row.strip().strip("|").split(" | ")]
        assert cells[-1], f"{name} has no description"
    assert "`--ema`" in rows["ema_decay"] and "`--clip-grad`" in rows["clip_grad_norm"]  # flags named unlike fields
    assert "(YAML / Python only)" in rows["model_config"] and "`--positive-class`" in rows["positive_class"]
