"""``check-data``: every problem in an image folder, found before training instead of hours into it.

Each image file is read once: Pillow parses the header (format, size, mode, EXIF orientation),
refuses sizes that would be a decompression bomb, then decodes the whole image so truncated files
show up; the bytes' SHA-256 finds exact duplicates (which leak between train and test). Files are
found by ``train``'s own walker (:func:`~resnexus.data.scan.walk_tree`), so both see the same ones.
The folder structure is checked too: empty class folders, a single class, hidden and stray files,
class folders that differ between train/val/test.

Findings have a severity:

* ``error``: training cannot use it (unreadable file, empty class folder, one class only, a file
  or linked folder reached under two classes, a split that ``train`` would refuse);
* ``warning``: training works but the result may mislead (duplicates across splits, a class
  missing from the test part, the same image under two labels, a file or folder reached twice
  through links, which is read once);
* ``note``: handled automatically (grey/palette/RGBA/CMYK/16-bit converted to RGB, EXIF rotation
  applied, hidden or non-image files skipped).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .scan import DataError, class_folders, is_hidden, natural_key, walk_tree
from .split import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, resolve_splits

# Pillow's own warning threshold is ~89 MP; 100 MP (e.g. 10000 x 10000) is far beyond any photo a
# classifier is trained on, while a bomb declares billions of pixels in a few kilobytes.
MAX_PIXELS = 100_000_000
_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_CONVERTED = {
    "1": "1-bit black and white",
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "I": "32-bit integer grayscale",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "F": "floating-point grayscale",
}


# problems of one image file: --skip-bad-images can leave such a file out
FILE_PROBLEMS = frozenset({"unreadable", "zero-byte", "too-large", "not-an-image", "truncated", "corrupt"})


@dataclass(frozen=True)
class Finding:
    path: Path
    severity: str  # "error", "warning" or "note"
    problem: str  # short kind, e.g. "truncated", "duplicate", "converted"
    detail: str

    def __str__(self) -> str:
        return f"{self.severity:7s} {self.problem:14s} {self.path}: {self.detail}"


@dataclass
class DataCheck:
    """What :func:`check_data` found; ``unreadable`` is what ``--skip-bad-images`` leaves out."""

    root: Path
    images: int = 0
    classes: dict[str, list[str]] = field(default_factory=dict)  # split part -> class folder names
    findings: list[Finding] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)  # sets of byte-identical images
    files: list[tuple[Path, str, str]] = field(default_factory=list)  # every image read: (path, part, class)

    def of(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of("error")

    @property
    def unreadable(self) -> list[Path]:
        """Image files that cannot be trained on (the errors that are about one file)."""
        return [f.path for f in self.errors if f.problem in FILE_PROBLEMS]

    @property
    def structural_errors(self) -> list[Finding]:
        """Errors no skipping can fix: an empty class folder, a single class, classes unknown to train."""
        return [f for f in self.errors if f.problem not in FILE_PROBLEMS]

    def summary(self) -> str:
        counts = {s: len(self.of(s)) for s in ("error", "warning", "note")}
        parts = ", ".join(f"{part}: {len(names)} classes" for part, names in self.classes.items())
        return (
            f"{self.root}: {self.images} images ({parts}); {counts['error']} errors, "
            f"{counts['warning']} warnings, {counts['note']} notes"
        )

    def format(self, notes: bool = True) -> str:
        """The summary line, then one line per finding, errors first."""
        order = ("error", "warning", "note") if notes else ("error", "warning")
        lines = [self.summary()] + [str(f) for s in order for f in self.of(s)]
        return "\n".join(lines)


def inspect_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], str | None]:
    """Findings about one image file and the SHA-256 of its bytes (None if it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as e:
        return [Finding(path, "error", "unreadable", f"cannot read the file: {e.strerror or e}")], None
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return [Finding(path, "error", "zero-byte", "the file is empty (0 bytes)")], digest
    findings: list[Finding] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                detail = (
                    f"{width} x {height} = {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP "
                    "limit: too large to decode safely (a decompression bomb?)"
                )
                return [Finding(path, "error", "too-large", detail)], digest
            mode, fmt = im.mode, im.format
            orientation = im.getexif().get(0x0112, 1)
            im.load()  # the whole image: truncated and corrupt data fail here (Pillow's default)
    except Image.DecompressionBombError as e:  # Pillow refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "more pixels than Pillow allows"
        detail = f"{size}, over the {max_pixels / 1e6:.0f} MP limit: too large to decode safely (a decompression bomb?)"
        return [Finding(path, "error", "too-large", detail)], digest
    except UnidentifiedImageError:
        head = data[:12]
        return [
            Finding(path, "error", "not-an-image", f"not an image file whatever its extension (first bytes: {head!r})")
        ], digest
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for broken data
        kind = "truncated" if "truncated" in str(e).lower() else "corrupt"
        return [Finding(path, "error", kind, f"cannot be decoded: {e}")], digest
    if mode in _CONVERTED:
        findings.append(Finding(path, "note", "converted", f"{_CONVERTED[mode]} ({fmt}), converted to RGB"))
    if isinstance(orientation, int) and orientation in range(2, 9):
        findings.append(Finding(path, "note", "exif-rotated", f"EXIF orientation {orientation}, applied on load"))
    return findings, digest


@contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning (above 89 MP): the "too-large" finding says it, and
    the filter is set here, in the calling thread, because warning filters are process-wide."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def check_data(
    source: str | Path,
    max_pixels: int = MAX_PIXELS,
    threads: int | None = None,
    *,
    split: bool = True,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    group_by: str | None = None,
    seed: int = 0,
) -> DataCheck:
    """Check a class-folder tree (optionally split into train/val/test) or a ``path,label`` CSV.

    With ``split``, the data are also split as ``train`` would split them (these fractions, groups
    and seed; unreadable files left out as ``--skip-bad-images`` leaves them), and a split that
    ``train`` would refuse (e.g. a class too small to be on both sides) is an error with train's
    own message, so what passes here is what train accepts. The check before training passes
    ``split=False``: it splits right after, with the run's own settings.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"data folder or CSV file does not exist: {source}")
    report = DataCheck(root=source)
    labelled: list[tuple[Path, str, str]] = []  # (path, part, class)
    if source.is_file():
        labelled = _csv_listing(source, report)
    else:
        parts = {_SPLIT_NAMES[p.name.casefold()]: p for p in _subdirs(source) if p.name.casefold() in _SPLIT_NAMES}
        ordered = [(part, parts[part]) for part in ("train", "val", "test") if part in parts]
        for part, folder in ordered or [("all", source)]:
            labelled += _class_tree(folder, part, report)
        _compare_parts(report)
    if not labelled and not report.errors:
        report.findings.append(Finding(source, "error", "no-images", "no image files found"))

    paths = [p for p, _, _ in labelled]
    workers = threads or min(8, os.cpu_count() or 1)
    with _no_bomb_warning(), ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL
        results = list(pool.map(lambda p: inspect_image(p, max_pixels), paths))
    by_hash: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    for item, (findings, digest) in zip(labelled, results):
        report.findings += findings
        if digest is not None and not any(f.severity == "error" for f in findings):
            by_hash[digest].append(item)
    report.images, report.files = len(labelled), labelled
    for items in by_hash.values():
        if len(items) > 1:
            report.duplicates.append([p for p, _, _ in items])
            _report_duplicates(items, report)
    if split and labelled and not report.structural_errors:
        _try_split(report, val_fraction, test_fraction, group_by, seed)
    return report


def _try_split(report: DataCheck, val_fraction: float, test_fraction: float, group_by: str | None, seed: int) -> None:
    """An error finding with train's message when train's split of these data would fail."""
    try:
        resolve_splits(
            report.root,
            group_by=group_by,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            exclude=report.unreadable,
            same_group=report.duplicates,
        )
    except DataError as e:
        how = f"--val-fraction {val_fraction:g} --test-fraction {test_fraction:g}" + (
            f" --group-by {group_by}" if group_by else ""
        )
        report.findings.append(Finding(report.root, "error", "split", f"train ({how}) refuses: {e}"))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name)), key=natural_key)


def _class_tree(folder: Path, part: str, report: DataCheck) -> list[tuple[Path, str, str]]:
    """Walk one class-folder tree with train's walker (:func:`walk_tree`), noting what it leaves out."""
    for stray in sorted(p for p in folder.iterdir() if p.is_file()):
        report.findings.append(Finding(stray, "note", "skipped", "a file beside the class folders, not in one"))
    for hidden in sorted(p for p in folder.iterdir() if p.is_dir() and is_hidden(p.name)):
        report.findings.append(Finding(hidden, "note", "skipped", "hidden folder"))
    classes = class_folders(folder)
    report.classes[part] = classes
    walk = walk_tree(folder, classes)
    report.findings += [Finding(path, "note", "skipped", why) for path, why in walk.skipped]
    report.findings += [Finding(p.path, "error" if p.error else "warning", p.kind, p.detail) for p in walk.problems]
    for name in classes:
        if not walk.images[name]:
            report.findings.append(Finding(folder / name, "error", "empty-class", "class folder has no images"))
    if part in ("all", "train") and len(classes) == 1:
        report.findings.append(
            Finding(folder, "error", "single-class", f"only one class ({classes[0]}); a classifier needs two or more")
        )
    elif part in ("all", "train") and not classes:
        report.findings.append(Finding(folder, "error", "no-classes", "no class folders"))
    return [(path, part, name) for name in classes for path in walk.images[name]]


def _compare_parts(report: DataCheck) -> None:
    """Class folders of val/test must be among train's; a class absent from test is not measured."""
    if "train" not in report.classes:
        return
    train = report.classes["train"]
    for part in ("val", "test"):
        names = report.classes.get(part)
        if names is None:
            continue
        for extra in [n for n in names if n not in train]:
            report.findings.append(
                Finding(
                    report.root / part,
                    "error",
                    "class-mismatch",
                    f"class folder {extra!r} is not among train's classes {train}",
                )
            )
        for missing in [n for n in train if n not in names]:
            report.findings.append(
                Finding(
                    report.root / part,
                    "warning",
                    "class-mismatch",
                    f"no {missing!r} folder: that class is not {'validated' if part == 'val' else 'tested'}",
                )
            )


def _csv_listing(csv_path: Path, report: DataCheck) -> list[tuple[Path, str, str]]:
    """Rows of a path,label CSV; missing files and paths outside the root are errors, not exceptions."""
    from .scan import is_inside

    root = csv_path.parent.resolve()
    items: list[tuple[Path, str, str]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
        if not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: missing column(s) path/label; found {reader.fieldnames}")
        for record in reader:
            raw, label = (record.get("path") or "").strip(), (record.get("label") or "").strip()
            full = (root / raw).resolve()
            where = Path(f"{csv_path}, row {reader.line_num}")
            if not raw or not label:
                report.findings.append(Finding(where, "error", "bad-row", "empty path or label"))
            elif not is_inside(full, root):
                report.findings.append(Finding(where, "error", "outside-root", f"{raw!r} is outside {root}"))
            elif not full.is_file():
                report.findings.append(Finding(where, "error", "missing-file", f"file not found: {full}"))
            else:
                items.append((full, "all", label))
    labels = sorted({label for _, _, label in items})
    report.classes["all"] = labels
    if len(labels) == 1:
        report.findings.append(Finding(csv_path, "error", "single-class", f"only one class ({labels[0]})"))
    return items


def _report_duplicates(items: list[tuple[Path, str, str]], report: DataCheck) -> None:
    first, *others = items
    for path, part, label in others:
        where = f"{first[0]}" + (f" (in {first[1]})" if first[1] != "all" else "")
        if part != first[1]:
            detail = f"byte-identical to {where}: the same image in {first[1]} and {part} leaks between them"
        elif label != first[2]:
            detail = f"byte-identical to {where}, but that copy is labelled {first[2]!r} and this one {label!r}"
        else:
            detail = f"byte-identical to {where}; duplicates are kept on one side of every split"
        report.findings.append(Finding(path, "warning", "duplicate", detail))
