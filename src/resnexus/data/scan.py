"""Finding the images of a dataset: class folders, CSV listings and plain files to predict.

Every way in ends in a :class:`Samples` table (paths, labels, class names, groups) so that the
splitting, the datasets and the training engine never care where the list came from. Problems
in the data raise :class:`DataError` naming the offending file, folder or CSV row, because
"no images found" without a path is the error message users hate most.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Named group-id conventions. "patient": MSLD-style names where the images of one patient share
# a stem and differ by a trailing "_<n>" (a13_1.jpg, a13_2.jpg -> "a13"; 17.jpg, 17_2.jpg -> "17").
GROUP_PATTERNS: dict[str, str] = {"patient": r"^(.+?)(?:_\d+)?\.[^.]+$"}
# What each convention means in words, for the messages of a split the groups defeat.
GROUP_RULES: dict[str, str] = {"patient": "the file stem without a trailing _N"}

# Folders that archivers and file browsers leave behind; never a class, never images.
_JUNK_DIRS = frozenset({"__MACOSX"})

_DIGITS = re.compile(r"(\d+)")


class DataError(ValueError):
    """The data on disk cannot be used as asked; the message names the path (or CSV row)."""


@dataclass
class Samples:
    """A labelled image list: parallel lists of paths, label indices and group ids.

    ``groups`` are what a split keeps together (e.g. all photos of one patient); ``root`` is the
    folder the paths were found under, kept for messages and relative display. ``grouping`` says
    how the groups were formed (see :func:`describe_grouping`; ``None``: each file its own group),
    so that a split the groups defeat can say why.
    """

    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    groups: list[str]
    root: Path
    grouping: str | None = None

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.labels) == len(self.groups)):
            raise ValueError(
                f"Samples lists differ in length: {len(self.paths)} paths, "
                f"{len(self.labels)} labels, {len(self.groups)} groups"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> Samples:
        """The samples at ``indices``, keeping all class names so label indices stay valid."""
        idx = [int(i) for i in indices]
        return Samples(
            paths=[self.paths[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            class_names=list(self.class_names),
            groups=[self.groups[i] for i in idx],
            root=self.root,
            grouping=self.grouping,
        )

    def excluding(self, paths: Collection[Path]) -> Samples:
        """These samples without the given files (compared by resolved path)."""
        drop = {Path(p).resolve() for p in paths}
        return self.subset([i for i, p in enumerate(self.paths) if p.resolve() not in drop])

    def linking(self, same: Sequence[Sequence[Path]]) -> Samples:
        """Groups merged so that each set of files in ``same`` (e.g. byte-identical duplicates)
        ends on one side of every split, together with the rest of their groups."""
        parent: dict[str, str] = {g: g for g in self.groups}

        def root(g: str) -> str:
            while parent[g] != g:
                parent[g] = parent[parent[g]]
                g = parent[g]
            return g

        where = {p.resolve(): g for p, g in zip(self.paths, self.groups)}
        for files in same:
            present = [where[r] for r in (Path(f).resolve() for f in files) if r in where]
            for g in present[1:]:
                parent[root(g)] = root(present[0])
        groups = [root(g) for g in self.groups]
        return Samples(self.paths, self.labels, self.class_names, groups, self.root, self.grouping)

    def class_counts(self) -> dict[str, int]:
        """Images per class, in class order, zero for classes without images here."""
        counts = dict.fromkeys(self.class_names, 0)
        for label in self.labels:
            counts[self.class_names[label]] += 1
        return counts


def natural_key(path: Path | str) -> tuple:
    """Sort key ordering numbers by value ("img2" < "img10"), component by component.

    Case is ignored first and used only to break ties, so the order is stable across systems.
    """
    parts = Path(path).parts
    # re.split with a capture group alternates str, int, str, ..., str, so tuples of two keys
    # never compare a str with an int.
    folded = tuple(
        tuple(int(tok) if i % 2 else tok.casefold() for i, tok in enumerate(_DIGITS.split(part))) for part in parts
    )
    return folded, parts


def is_hidden(name: str) -> bool:
    """A dot-name or a tool's junk folder (``__MACOSX``...): never a class, never an image."""
    return name.startswith(".") or name in _JUNK_DIRS


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class WalkProblem:
    """A file or linked folder reached by a second route (or a link back up to the data folder).

    ``error`` when the two routes would give it two different classes: every command refuses that,
    because no choice between the labels is right. Otherwise it is read once and ``check-data``
    warns, so a link can never add a second copy of a file unnoticed.
    """

    path: Path  # the route that was not read
    other: Path  # the route that was read (or the folder the link leads back to)
    kind: str  # "two-labels", "reached-twice" or "link-loop"
    detail: str
    error: bool


@dataclass
class Walk:
    """What one walk of a folder tree found: the images of each top folder and what was left out."""

    root: Path
    images: dict[str, list[Path]]  # top folder name ("" for the root itself) -> its images, natural order
    skipped: list[tuple[Path, str]]  # (path, why): hidden files and folders, files without an image extension
    problems: list[WalkProblem]

    @property
    def errors(self) -> list[WalkProblem]:
        return [p for p in self.problems if p.error]


def class_folders(root: Path) -> list[str]:
    """The class folders of a tree: its non-hidden sub-folders (links too), sorted as ImageFolder sorts them."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not is_hidden(e.name))


def walk_tree(root: str | Path, tops: Sequence[str] | None = None) -> Walk:
    """Every image below each top folder of ``root`` (its class folders), or below ``root`` itself.

    The one walker of the package: ``check-data``, the check before training, ``train``'s scan and
    ``predict``'s all read a folder through it, so they always see the same files. Hidden files and
    folders are skipped. Symbolic links (to folders or files) are followed, so a data set may be
    assembled from links; but every real folder is entered once and every real file counted once:

    * a link to a folder that the walk reaches anyway (a loop, a link back up to the data folder,
      a second link to the same place) is not followed: a warning, its images stay where they are;
    * a file reached twice under one class is counted once: a warning naming both routes;
    * a file or linked folder reached under two classes is an error naming both routes (its label
      would be a coin toss), refused alike by ``check-data``, ``train`` and ``evaluate``.

    Folders reached without a link are claimed first, so the route without a link is the one kept.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    top_dirs = {name: root / name for name in tops} if tops is not None else {"": root}
    owner: dict[str, tuple[str, Path]] = {}  # real folder -> (top, route): read without a link, then via one
    for name, top in top_dirs.items():
        for dirpath, dirnames, _ in os.walk(top):
            dirnames[:] = [d for d in dirnames if not is_hidden(d) and not os.path.islink(os.path.join(dirpath, d))]
            owner.setdefault(os.path.realpath(dirpath), (name, Path(dirpath)))
    walk = Walk(root=root, images={name: [] for name in top_dirs}, skipped=[], problems=[])
    found: list[tuple[bool, tuple, Path, str, str]] = []  # (through a link, sort key, route, top, real path)
    for name, top in top_dirs.items():
        through_link = {os.fspath(top): False}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            through = through_link[dirpath]
            keep = []
            for d in sorted(dirnames, key=natural_key):
                full = os.path.join(dirpath, d)
                if is_hidden(d):
                    walk.skipped.append((Path(full), "hidden folder"))
                    continue
                linked = through or os.path.islink(full)
                if linked:
                    real = os.path.realpath(full)
                    problem = _second_route(Path(full), real, name, root, root_real, owner)
                    if problem is not None:
                        walk.problems.append(problem)
                        continue
                    owner[real] = (name, Path(full))
                through_link[full] = linked
                keep.append(d)
            dirnames[:] = keep
            for f in filenames:
                path = Path(dirpath, f)
                if is_hidden(f):
                    walk.skipped.append((path, "hidden file"))
                elif not _is_image(path):
                    walk.skipped.append((path, f"not an image extension ({path.suffix or 'none'})"))
                else:
                    key = natural_key(path.relative_to(root))
                    found.append((through or path.is_symlink(), key, path, name, os.path.realpath(path)))
    first: dict[str, tuple[Path, str]] = {}
    for _, _, path, name, real in sorted(found, key=lambda f: (f[0], f[1])):  # routes without a link first
        if real not in first:
            first[real] = (path, name)
            walk.images[name].append(path)
        elif first[real][1] == name:
            other = first[real][0]
            walk.problems.append(
                WalkProblem(
                    path, other, "reached-twice", f"the same file as {other} (through a link): counted once", False
                )
            )
        else:
            other, label = first[real]
            detail = f"the same file as {other}, which is in class {label!r}: it would be labelled both {label!r} and {name!r}"
            walk.problems.append(WalkProblem(path, other, "two-labels", detail, True))
    for paths in walk.images.values():
        paths.sort(key=lambda p: natural_key(p.relative_to(root)))
    return walk


def _second_route(
    path: Path, real: str, top: str, root: Path, root_real: str, owner: dict[str, tuple[str, Path]]
) -> WalkProblem | None:
    """Why the linked folder ``path`` (leading to ``real``) is not entered, or None to enter it."""
    if real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
        detail = f"a link back to {real}, which holds the data folder {root}: not followed (a loop)"
        return WalkProblem(path, Path(real), "link-loop", detail, False)
    if real not in owner:
        return None
    label, other = owner[real]
    if label == top:
        detail = f"a link to {other}, a folder already read: not followed, its images are counted once"
        return WalkProblem(path, other, "reached-twice", detail, False)
    detail = f"a link to {other}, a folder of class {label!r}: its images would be labelled both {label!r} and {top!r}"
    return WalkProblem(path, other, "two-labels", detail, True)


def refuse_two_labels(walk: Walk) -> None:
    """Raise :class:`DataError` listing what the walk found under two classes (see :func:`walk_tree`)."""
    if walk.errors:
        lines = "\n".join(f"{p.path}: {p.detail}" for p in walk.errors)
        raise DataError(
            f"{len(walk.errors)} file(s) or linked folder(s) under two classes in {walk.root}; fix the links:\n{lines}"
        )


def _resolve_pattern(pattern: str) -> re.Pattern[str]:
    source = GROUP_PATTERNS.get(pattern, pattern)
    try:
        return re.compile(source)
    except re.error as e:
        raise DataError(f"invalid group pattern {pattern!r}: {e}") from None


def describe_grouping(group_by: str, column: bool = False) -> str:
    """How ``--group-by group_by`` forms groups, in words: a named convention, a CSV column or a regex."""
    if column:
        how = f"the CSV column {group_by!r}"
    else:
        how = GROUP_RULES.get(
            group_by, "a regular expression on the file name: its first capture group, else the whole match"
        )
    return f"--group-by {group_by!r} ({how})"


def group_ids(paths: Sequence[Path], pattern: str | None) -> list[str]:
    """Group id of each file, so that related images (one patient, one scene) split together.

    ``pattern`` is a regex searched in the file name (or a name from :data:`GROUP_PATTERNS`, e.g.
    ``"patient"``); the id is its first capture group if it has one, else the whole match. A file
    the pattern does not match raises :class:`DataError`. With ``None`` each file is its own
    group, identified by its path as given (posix form).
    """
    if pattern is None:
        return [Path(p).as_posix() for p in paths]
    regex = _resolve_pattern(pattern)
    ids: list[str] = []
    for p in paths:
        p = Path(p)
        m = regex.search(p.name)
        if m is None:
            raise DataError(f"group pattern {pattern!r} does not match file name {p.name!r} ({p})")
        gid = m.group(1) if regex.groups and m.group(1) is not None else m.group(0)
        if not gid:
            raise DataError(f"group pattern {pattern!r} gives an empty group id for {p}")
        ids.append(gid)
    return ids


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    return root.absolute()


def scan_folder(root: str | Path, group_by: str | None = None, class_names: Sequence[str] | None = None) -> Samples:
    """Scan an ImageFolder-style tree: one sub-folder per class, images at any depth below it.

    Class names are the sorted folder names (the same order torchvision's ImageFolder uses), or
    ``class_names`` when given, so a test folder gets the training set's label indices; then a
    class folder not in ``class_names`` is an error, a missing one is not. Files are found by
    :func:`walk_tree` (hidden and non-image files skipped, links followed, each real file once; a
    file under two classes is an error). ``group_by`` is passed to :func:`group_ids` with paths
    relative to ``root``.
    """
    root = _check_root(Path(root))
    folders = class_folders(root)
    if not folders:
        stray = [p.name for p in root.iterdir() if p.is_file() and _is_image(p)][:3]
        hint = f" (it holds images directly, e.g. {stray}; put them in one folder per class)" if stray else ""
        raise DataError(f"no class folders in {root}{hint}")
    if class_names is None:
        names = folders
    else:
        names = list(class_names)
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise DataError(f"class folder(s) {unknown} in {root} are not among the known classes {names}")
    index = {name: i for i, name in enumerate(names)}
    walk = walk_tree(root, folders)
    refuse_two_labels(walk)
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = walk.images[folder]
        if not files:
            raise DataError(f"class folder has no images: {root / folder}")
        paths.extend(files)
        labels.extend([index[folder]] * len(files))
    groups = group_ids([p.relative_to(root) for p in paths], group_by)
    grouping = None if group_by is None else describe_grouping(group_by)
    return Samples(paths=paths, labels=labels, class_names=names, groups=groups, root=root, grouping=grouping)


def scan_dataset(source: str | Path, group_by: str | None = None, class_names: Sequence[str] | None = None) -> Samples:
    """One labelled data set from a class-folder tree or a ``path,label`` CSV file.

    For a CSV, ``group_by`` is a column name when the file has such a column, else (as for
    folders) a regex on the file names.
    """
    source = Path(source).expanduser()
    if source.suffix.lower() != ".csv" or not source.is_file():
        return scan_folder(source, group_by, class_names)
    with open(source, newline="", encoding="utf-8-sig") as f:
        columns = [c.strip() for c in next(csv.reader(f), [])]
    if group_by is not None and group_by in columns:
        return scan_csv(source, group_column=group_by, class_names=class_names)
    samples = scan_csv(source, class_names=class_names)
    if group_by is not None:
        samples.groups = group_ids([p.relative_to(samples.root) for p in samples.paths], group_by)
        samples.grouping = describe_grouping(group_by)
    return samples


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies under ``root`` (a CSV row may not point outside the data folder)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def scan_csv(
    csv_path: str | Path,
    root: str | Path | None = None,
    group_column: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Samples:
    """Read a ``path,label`` CSV (header required, extra columns ignored) into :class:`Samples`.

    Relative paths resolve against ``root`` (default: the CSV's folder); every path must stay
    inside ``root`` so a listing cannot reach arbitrary files. Labels are class names; the
    classes are the sorted distinct labels unless ``class_names`` is given. Rows are numbered as
    a spreadsheet shows them (the header is row 1). Without ``group_column`` each file is its
    own group.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV file does not exist: {csv_path}")
    base = Path(root).expanduser() if root is not None else csv_path.parent
    base = _check_root(base).resolve()
    rows: list[tuple[int, Path, str, str]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        needed = ["path", "label"] + ([group_column] if group_column else [])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {missing}; found {columns}")
        for record in reader:
            row = reader.line_num
            where = f"{csv_path}, row {row}"
            raw = (record.get("path") or "").strip()
            label = (record.get("label") or "").strip()
            if not raw or not label:
                raise DataError(f"{where}: empty path or label")
            p = Path(raw).expanduser()
            full = (p if p.is_absolute() else base / p).resolve()
            if not is_inside(full, base):
                raise DataError(f"{where}: path {raw!r} is outside the data root {base}")
            if not full.is_file():
                raise DataError(f"{where}: file not found: {full}")
            group = full.relative_to(base).as_posix()
            if group_column:
                group = (record.get(group_column) or "").strip()
                if not group:
                    raise DataError(f"{where}: empty {group_column!r}")
            rows.append((row, full, label, group))
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    names = sorted({label for _, _, label, _ in rows}) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(names)}
    labels: list[int] = []
    for row, _, label, _ in rows:
        if label not in index:
            raise DataError(f"{csv_path}, row {row}: label {label!r} is not among the classes {names}")
        labels.append(index[label])
    return Samples(
        paths=[r[1] for r in rows],
        labels=labels,
        class_names=names,
        groups=[r[3] for r in rows],
        root=base,
        grouping=None if group_column is None else describe_grouping(group_column, column=True),
    )


def scan_unlabeled(path: str | Path) -> list[Path]:
    """Images to predict: the file itself, or every image below a folder in natural order, found
    by :func:`walk_tree` as ``train`` finds them (links followed, each real file once)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    found = walk_tree(path).images[""]
    if not found:
        raise DataError(f"no images under {path}")
    return found
