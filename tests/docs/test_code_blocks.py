"""The README's and the docs' code blocks run, and their commands parse, so the docs cannot rot.

How it works:

- Every fenced ```bash and ```python block of README.md and docs/**/*.md is extracted. A block
  right after a line ``<!-- test: skip (REASON) -->`` is not run (downloads, servers, GPUs,
  several machines, hours of training): the reason says why.
- Fast check (every block, skipped or not): each ``resnexus ...`` command line of a bash block
  parses with the real argument parser, so no documented option can disappear unnoticed.
- Slow check, one test per page: the page's blocks run in order in one temporary folder that
  holds tiny generated images: ``photos/`` (two classes, files named ``P01_1.png`` so that
  ``--group-by patient`` works), ``new-photos/`` and ``held-out/``. Only ``resnexus`` commands of
  bash blocks run (``pip``, ``curl``, ``export`` and the like are not); python blocks run as
  scripts. Training is made tiny by rewriting the command: ``--epochs N`` becomes N // 20 (at
  least 1; so a documented longer ``--resume --epochs`` stays longer), ``--folds`` 2,
  ``--repeats`` 1, ``--jobs`` 1, 32-px images, batch 8, and ``--overwrite`` where a page trains
  into the same folder twice; python blocks get the same through ``TrainConfig(...)``'s keywords.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from resnexus.cli import build_parser
from tests.data.images import write_image

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!--\s*test:\s*skip\s*\((.+)\)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
HISTORY = re.compile(
    r"earlier session|later session|previous session|this session|issue [0-9]+|the brief|this machine|this VM",
    re.IGNORECASE,
)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None


def blocks(page: Path) -> list[Block]:
    """The fenced bash / python blocks of ``page``, with the skip reason written before each."""
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            start, body = i, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            before = next((line for line in reversed(lines[:start]) if line.strip()), "")
            skip = SKIP.search(before)
            if m.group(1) in ("bash", "python"):
                found.append(Block(page, start + 1, m.group(1), "\n".join(body), skip and skip.group(1)))
        i += 1
    return found


def commands(code: str) -> list[list[str]]:
    """The ``resnexus`` commands of a bash block, as argument lists (continuations joined, comments dropped)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words[:1] == ["resnexus"]:
                out.append(words[1:])
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def _id(block: Block) -> str:
    return f"{block.page.relative_to(ROOT)}:{block.line}"


def test_the_docs_have_blocks_and_tutorials():
    assert len(ALL_BLOCKS) > 30
    assert len(list((ROOT / "docs" / "tutorials").glob("*.md")) + list((ROOT / "docs" / "how-to").glob("*.md"))) >= 6


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "bash"], ids=_id)
def test_every_documented_command_parses(block):
    parser = build_parser()
    for argv in commands(block.code):
        if argv in (["--version"],):
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{_id(block)}: `resnexus {shlex.join(argv)}` does not parse (exit {exit_.code})")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_history_in_the_docs(page):
    text = page.read_text(encoding="utf-8")
    assert not HISTORY.findall(text), f"{page.relative_to(ROOT)}: {HISTORY.findall(text)}"


def test_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 200
    assert lines[3].startswith("pip install -e . && resnexus train") and "[test]" not in lines[3]
    assert lines[4].startswith('pip install -e ".[test]" && python -m pytest')
    first_screen = "\n".join(lines[:40])  # the 300-photo question is answered on the first screen
    assert "--weights imagenet --folds 5 --group-by patient" in first_screen


# --- running the blocks on tiny data -------------------------------------------------------------


def tiny_workdir(root: Path) -> Path:
    for cls, seed in (("Monkeypox", 0), ("Others", 100)):
        for patient in range(1, 11):
            for k in (1, 2):
                write_image(root / "photos" / cls / f"P{seed + patient:03d}_{k}.png", 24, 24, seed + patient * 3 + k)
        for k in range(3):
            write_image(root / "held-out" / cls / f"H{k}.png", 24, 24, seed + 50 + k)
    for k in range(4):
        write_image(root / "new-photos" / f"new_{k}.png", 24, 24, 200 + k)
    return root


def _shorter(match: re.Match) -> str:
    return f"{match.group(1)}{max(1, int(match.group(2)) // 20)}"


def tiny_command(argv: list[str]) -> list[str]:
    """``argv`` with training made tiny (see the module docstring)."""
    if argv[0] not in ("train", "compare"):
        return argv
    text = " ".join(shlex.quote(a) for a in argv)
    text = re.sub(r"(--epochs )(\d+)", _shorter, text)
    text = re.sub(r"--folds \d+", "--folds 2", text)
    text = re.sub(r"--repeats \d+", "--repeats 1", text)
    text = re.sub(r"--jobs \d+", "--jobs 1", text)
    text = re.sub(r"--image-size \d+", "", text)
    argv = shlex.split(text)
    extra = ["--image-size", "32", "--batch-size", "8"]
    if "--epochs" not in argv and "--resume" not in argv:
        extra += ["--epochs", "1"]
    if "--resume" not in argv:
        extra.append("--overwrite")
        if argv[0] == "train" and "--data" not in argv:  # the built-in digits: keep it short
            extra += ["--val-fraction", "0.1"]
    else:
        extra = []
    return [*argv, *extra]


def tiny_python(code: str) -> str:
    code = re.sub(r"(epochs=)(\d+)", _shorter, code)
    code = re.sub(r"folds=\d+", "folds=2", code)
    kwargs = "image_size=32, batch_size=8, overwrite=True, "
    if "epochs=" not in code:
        kwargs += "epochs=1, "
    return code.replace("TrainConfig(", f"TrainConfig({kwargs}")


def _run(args: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


RUNNABLE = [p for p in PAGES if any(b.skip is None for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run_on_tiny_data(page, tmp_path):
    work = tiny_workdir(tmp_path)
    env_python = [sys.executable]
    for block in blocks(page):
        if block.skip:
            continue
        if block.lang == "python":
            _run([*env_python, "-c", tiny_python(block.code)], work, _id(block))
            continue
        for argv in commands(block.code):
            _run(
                [*env_python, "-m", "resnexus", *tiny_command(argv)], work, f"{_id(block)}: resnexus {shlex.join(argv)}"
            )
