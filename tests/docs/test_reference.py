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


def test_the_run_directory_page_lists_every_name_rundir_owns():
    from resnexus.engine.rundir import RunDir

    table = _generators()["run-directory"]()
    paths = [path for _, path, _ in RunDir.layout()]
    names = {attr: value for attr, value in vars(RunDir).items() if attr.isupper() and isinstance(value, str)}
    assert len(names) >= 12
    for attr, value in names.items():
        assert any(value in path.split("/") for path in paths), f"RunDir.{attr} ({value!r}) is not in RunDir.layout()"
    for path in ("checkpoints/best.pt", "checkpoints/last.keras", "cv_metrics.json", "refit/", "compare_run.json"):
        assert f"| `{path}` |" in table
    page = (GEN_PAGES.parent / "reference" / "run-directory.md").read_text(encoding="utf-8")
    assert "<!-- generated: run-directory -->" in page and "reference/run-directory.md" in _pages()


def _pages() -> tuple[str, ...]:
    return runpy.run_path(str(GEN_PAGES), run_name="gen_pages")["PAGES"]


def test_run_directory_descriptions_fit_in_a_table_cell():
    from resnexus.engine.rundir import RunDir

    for _, path, what in RunDir.layout():
        assert "|" not in what and "\n" not in what, f"{path}: a | or a line break would split the table row"


def test_sphinx_roles_of_the_docstrings_read_as_code_on_the_site():
    hooks = runpy.run_path(str(GEN_PAGES.parent / "hooks.py"), run_name="hooks")
    html = "<p>:func:<code>train</code>, :meth: <code>Checkpoint.load</code>, :class:<code>~a.b.RunDir</code>, 3:1</p>"
    assert (
        hooks["drop_roles"](html) == "<p><code>train</code>, <code>Checkpoint.load</code>, <code>RunDir</code>, 3:1</p>"
    )
