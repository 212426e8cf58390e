"""Train/val/test splits and K folds that are stratified by class and never split a group.

Images of one patient (or one scene, one animal) on both sides of a split leak the answer and
inflate the score, so every split here keeps each group on one side. The heavy lifting is
scikit-learn's: ``train_test_split`` when every group is a single file (a plain stratified
split with exact sizes), ``StratifiedGroupKFold`` otherwise (sizes exact up to whole groups).
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from .scan import DataError, Samples, scan_dataset

_VAL_DIRS = ("val", "valid", "validation")
_MAX_FOLDS = 20  # finest fold grid used to approximate a holdout fraction with whole groups
# train's defaults (TrainConfig's too), also what check-data tries, so both refuse the same data
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2


def _per_class(labels: Sequence[int], groups: Sequence[str], class_names: Sequence[str]) -> str:
    images: dict[int, int] = defaultdict(int)
    group_sets: dict[int, set[str]] = defaultdict(set)
    for y, g in zip(labels, groups):
        images[y] += 1
        group_sets[y].add(g)
    parts = [f"{class_names[y]!r}: {images[y]} images / {len(group_sets[y])} groups" for y in sorted(images)]
    return "; ".join(parts)


def _formed(groups: Sequence[str], grouping: str | None, shown: int = 5) -> str:
    """How the groups were formed and the largest of them ("" when each file is its own group), so
    that a pattern that grouped wrongly (every image in two groups, say) shows at once."""
    if grouping is None:
        return ""
    counts = Counter(groups).most_common()
    listed = ", ".join(f"{g!r} ({n} images)" for g, n in counts[:shown])
    more = f", ... ({len(counts) - shown} more)" if len(counts) > shown else ""
    return f"; {len(counts)} groups from {grouping}: every image maps to one of {listed}{more}"


def _fold_grid(fraction: float, n_groups: int) -> tuple[int, int]:
    """(m, k): hold out m of k folds, m/k closest to ``fraction`` (fewest folds on ties)."""
    best: tuple[float, int, int] | None = None
    for k in range(2, min(_MAX_FOLDS, n_groups) + 1):
        m = min(max(round(fraction * k), 1), k - 1)
        err = abs(m / k - fraction)
        if best is None or err < best[0] - 1e-12:
            best = (err, m, k)
    assert best is not None
    return best[1], best[2]


def _holdout(
    labels: np.ndarray,
    groups: np.ndarray,
    fraction: float,
    seed: int,
    what: str,
    class_names: Sequence[str],
    grouping: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (keep, holdout) with about ``fraction`` held out.

    ``what`` says what is held out and, where ``fraction`` is not the one the user typed, why
    (validation is carved from what the test split left): messages must show the user's numbers.
    ``grouping`` (:attr:`Samples.grouping`) lets them say how the groups were formed.
    """
    n = len(labels)
    classes = set(labels.tolist())

    def too_few(reason: str) -> DataError:
        return DataError(
            f"too few images to hold out {what} ({reason}); "
            f"{n} images: {_per_class(labels.tolist(), groups.tolist(), class_names)}{_formed(groups.tolist(), grouping)}"
        )

    per_class_groups = defaultdict(set)
    for y, g in zip(labels.tolist(), groups.tolist()):
        per_class_groups[y].add(g)
    thin = [class_names[y] for y, gs in sorted(per_class_groups.items()) if len(gs) < 2]
    if thin:
        raise too_few(f"class(es) {thin} have fewer than 2 groups, so they cannot be on both sides")

    positions = np.arange(n)
    if len(set(groups.tolist())) == n:  # every group a single file: plain stratified split
        try:
            keep, hold = train_test_split(positions, test_size=fraction, stratify=labels, random_state=seed)
        except ValueError as e:
            raise too_few(str(e)) from None
        if set(labels[keep].tolist()) != classes:
            raise too_few("a class would be missing from training")
        return np.sort(keep), np.sort(hold)

    n_groups = len(set(groups.tolist()))
    m, k = _fold_grid(fraction, n_groups)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        try:
            folds = [test for _, test in splitter.split(positions, labels, groups)]
        except ValueError as e:  # e.g. every class smaller than the fold grid: scikit-learn's reason
            raise too_few(f"{e}; the held-out part is {m} of {k} grouped folds") from None
    candidates = []
    for start in range(k):
        hold = np.sort(np.concatenate([folds[(start + j) % k] for j in range(m)]))
        keep = np.setdiff1d(positions, hold)
        if len(hold) and set(labels[keep].tolist()) == classes:
            candidates.append((set(labels[hold].tolist()) == classes, keep, hold))
    if not candidates:
        grid = f"; with {n_groups} groups the held-out part is {m} of {k} grouped folds ({m / k:.1%})"
        raise too_few("no grouping keeps every class in training" + (grid if abs(m / k - fraction) > 5e-4 else ""))
    # prefer a holdout that also has every class; otherwise the first one that keeps training whole
    for full, keep, hold in candidates:
        if full:
            return keep, hold
    return candidates[0][1], candidates[0][2]


def split_samples(
    samples: Samples,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> dict[str, Samples]:
    """Split into "train", "val", "test" (a part is omitted when its fraction is 0).

    Stratified by label and grouped (no group on two sides); the same seed gives the same split;
    every class keeps images in train. The test part is carved first, then val from the rest.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if len(samples) == 0:
        raise DataError(f"no images to split in {samples.root}")
    labels = np.asarray(samples.labels)
    groups = np.asarray(samples.groups, dtype=object)
    pool = np.arange(len(samples))
    out_idx: dict[str, np.ndarray] = {}
    if test_fraction > 0:
        what = f"{test_fraction:.0%} for test"
        keep, hold = _holdout(labels, groups, test_fraction, seed, what, samples.class_names, samples.grouping)
        out_idx["test"] = pool[hold]
        pool = pool[keep]
    if val_fraction > 0:
        frac = val_fraction / (1.0 - test_fraction)
        what = f"{val_fraction:.0%} for validation"
        if test_fraction > 0:  # the fraction applied to what is left: say so, or "12 %" looks like a bug
            what += f" ({frac:.1%} of the {len(pool)} images left after the test split)"
        keep, hold = _holdout(labels[pool], groups[pool], frac, seed, what, samples.class_names, samples.grouping)
        out_idx["val"] = pool[hold]
        pool = pool[keep]
    result = {"train": samples.subset(pool.tolist())}
    for name in ("val", "test"):
        if name in out_idx:
            result[name] = samples.subset(np.sort(out_idx[name]).tolist())
    return result


def kfold_splits(samples: Samples, folds: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """K stratified, grouped folds as (train indices, val indices) pairs into ``samples``.

    The val parts partition the data; every training part holds every class.
    """
    if folds < 2:
        raise DataError("--folds must be >= 2")
    labels = np.asarray(samples.labels)
    groups = np.asarray(samples.groups, dtype=object)
    n_groups = len(set(samples.groups))
    detail = f"{len(samples)} images: {_per_class(samples.labels, samples.groups, samples.class_names)}"
    detail += _formed(samples.groups, samples.grouping)
    if n_groups < folds:
        raise DataError(f"cannot make {folds} folds from {n_groups} groups; {detail}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    classes = set(samples.labels)
    result: list[tuple[list[int], list[int]]] = []
    for train, val in splitter.split(np.zeros(len(samples)), labels, groups):
        if set(labels[train].tolist()) != classes:
            raise DataError(f"with {folds} folds a class would be missing from a training fold; {detail}")
        result.append((np.sort(train).tolist(), np.sort(val).tolist()))
    return result


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``root`` named like one of ``names`` (case-insensitive), if any."""
    wanted = {n.casefold() for n in names}
    hits = sorted(p for p in root.iterdir() if p.is_dir() and p.name.casefold() in wanted)
    if len(hits) > 1:
        raise DataError(f"ambiguous split folders in {root}: {[p.name for p in hits]}")
    return hits[0] if hits else None


def resolve_splits(
    root: str | Path,
    group_by: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    exclude: Collection[Path] = (),
    same_group: Sequence[Sequence[Path]] = (),
) -> dict[str, Samples]:
    """The splits of a dataset folder: the ones on disk if it has them, else made here.

    A root with a ``train/`` folder (names matched case-insensitively) is used as given, with
    ``val/`` (or ``valid/``, ``validation/``) and ``test/`` when present; their class folders must
    be among train's, and val is carved out of train when absent (``test_fraction`` is then
    unused). Any other root, or a ``path,label`` CSV file, is one data set split by
    :func:`split_samples`. ``exclude`` leaves files out (unreadable ones); each set of files in
    ``same_group`` (byte-identical duplicates) is kept on one side of a split made here.
    """
    root = Path(root).expanduser()

    def scan(source: Path, class_names: Sequence[str] | None = None) -> Samples:
        return scan_dataset(source, group_by, class_names).excluding(exclude).linking(same_group)

    if root.suffix.lower() == ".csv" and root.is_file():
        return split_samples(scan(root), val_fraction, test_fraction, seed)
    if not root.is_dir():
        raise DataError(f"data folder does not exist: {root}")
    train_dir = _find_dir(root, ["train"])
    if train_dir is None:
        return split_samples(scan(root), val_fraction, test_fraction, seed)
    train = scan(train_dir)
    val_dir = _find_dir(root, _VAL_DIRS)
    test_dir = _find_dir(root, ["test"])
    if val_dir is not None:
        result = {"train": train, "val": scan(val_dir, train.class_names)}
    else:
        result = split_samples(train, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    if test_dir is not None:
        result["test"] = scan(test_dir, train.class_names)
    return result
