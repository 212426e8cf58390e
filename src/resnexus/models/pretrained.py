"""Published weights by name: the catalog entry type, and fetching a file once, verified, offline-friendly.

Each family file keeps a ``PRETRAINED`` table beside its spec tables: model name -> the
:class:`PretrainedWeights` that torchvision, timm, Keras or the paper's authors publish for it,
every fact (URL, hash, top-1) copied from the source named in the entry. :func:`fetch_weights`
turns an entry into a local file:

* a file named :attr:`PretrainedWeights.file_name` in the offline folder (``weights_dir=`` or
  ``$RESNEXUS_WEIGHTS_DIR``) is verified and used, with no network request at all;
* otherwise torch's hub cache (``torch.hub.get_dir()/checkpoints``) is used, downloading the file
  once: into a temporary file in that folder, hashed while it arrives, and renamed into place only
  when its length and hash are right, so the cache never holds half a file or a wrong one;
* with no network, the error names the URL, the file name and the folder to put it in.

This module sits below the registry and imports nothing of the package but :mod:`resnexus.files`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..files import atomic_write

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "RESNEXUS_WEIGHTS_DIR"
SOURCES = ("torchvision", "timm", "keras", "official")  # the layouts load_weights converts from
HASH_KINDS = {"sha256": 64, "sha256-prefix": None, "md5": 32}  # kind -> hex length (None: a prefix)
KERAS_MODES = ("tf", "torch", "caffe")  # keras.applications.imagenet_utils.preprocess_input modes
_CHUNK = 1 << 20
_TIMEOUT_S = 30
# torch.hub's convention, which torchvision checks (load_state_dict_from_url(check_hash=True)):
# "<name>-<first hex digits of the file's SHA-256>.<ext>"
_HASH_IN_FILE_NAME = re.compile(r"-([a-f0-9]{8,})\.")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras "tf" preprocessing (ResNetV2): x / 127.5 - 1, i.e. mean 0.5 and std 0.5 on [0, 1] pixels.
KERAS_TF_MEAN = (0.5, 0.5, 0.5)
KERAS_TF_STD = (0.5, 0.5, 0.5)


class DownloadError(FileNotFoundError):
    """A weights file that is not here and could not be fetched: no network, an HTTP error, a cut-off transfer.

    A FileNotFoundError, like a missing local weights file, so callers (the CLI) report both the same way.
    """


class ChecksumError(ValueError):
    """A weights file whose hash is not the one its source publishes."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are made model input for evaluation: resize the shorter side, centre-crop, normalise.

    One vocabulary for published weights (how the source evaluated them) and for checkpoints (how
    the run was trained): ``image_size`` is the side of the square crop the network sees,
    ``crop_fraction`` that crop's share of the resized shorter side (torchvision's 224 of 256 is
    0.875; timm calls it ``crop_pct``). :meth:`from_metadata` also reads the other spellings older
    files use. ``keras_mode`` names the ``preprocess_input`` mode of Keras files ("tf": x / 127.5 - 1,
    "torch": ImageNet mean / std); ``mean`` / ``std`` are then the same normalisation written on
    [0, 1] pixels, which is what our data pipeline applies.
    """

    image_size: int
    crop_fraction: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    keras_mode: str | None = None

    @classmethod
    def resized(
        cls, image_size: int, resize_size: int, mean: tuple[float, ...], std: tuple[float, ...], **kw: Any
    ) -> Preprocessing:
        """The form the sources publish: resize the shorter side to ``resize_size``, crop ``image_size``."""
        return cls(image_size, image_size / resize_size, tuple(mean), tuple(std), **kw)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Preprocessing:
        """The preprocessing a checkpoint's (or an exported file's) metadata describes, in any spelling
        resnexus, timm or Keras used: ``image_size`` / ``img_size`` / ``input_size`` (an int or timm's
        (C, H, W)) / ``input_shape`` (Keras' (H, W, C)); ``crop_fraction`` / ``crop_pct``."""
        size = _first(meta, ("image_size", "img_size", "input_size"))
        if isinstance(size, (list, tuple)):  # timm's (C, H, W)
            size = size[-1]
        if size is None and meta.get("input_shape"):  # Keras' (H, W, C)
            size = meta["input_shape"][0]
        if size is None or meta.get("mean") is None or meta.get("std") is None:
            raise ValueError(f"no preprocessing in this metadata (image size, mean, std); keys: {sorted(meta)}")
        crop = _first(meta, ("crop_fraction", "crop_pct"))
        return cls(
            image_size=int(size),
            crop_fraction=float(crop) if crop is not None else DEFAULT_CROP_FRACTION,
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            interpolation=str(meta.get("interpolation") or "bilinear"),
            keras_mode=meta.get("keras_mode"),
        )

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop (as the evaluation transform computes it)."""
        return max(self.image_size, math.floor(self.image_size / self.crop_fraction + 1e-6))

    @property
    def input_size(self) -> int:
        """The old name of :attr:`image_size` (kept for code written against it)."""
        return self.image_size

    def metadata(self) -> dict[str, Any]:
        """The checkpoint keys this preprocessing is stored under (plain types)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_fraction": self.crop_fraction,
        }

    def transforms(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A uint8 image (C, H, W) -> the normalised float crop the model takes, as torchvision's
        ``Weights.transforms()`` does; the engine applies the same steps in two halves
        (``resnexus.engine.checkpoint.eval_preprocess``: geometry per image, the rest per batch)."""
        from torchvision.transforms import v2

        mean, std = list(self.mean), list(self.std)
        return v2.Compose(
            [
                v2.Resize(self.resize_size, antialias=True),
                v2.CenterCrop(self.image_size),
                v2.Lambda(lambda x: v2.functional.normalize(x.float().div(255), mean, std)),
            ]
        )


DEFAULT_CROP_FRACTION = 0.875  # the classic ImageNet protocol (resize 256, crop 224)


def _first(meta: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of ``keys`` that ``meta`` holds (not None), else None."""
    return next((meta[k] for k in keys if meta.get(k) is not None), None)


@dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file for one of our models, with where each fact came from."""

    tag: str  # what users pass: "torchvision:IMAGENET1K_V2", "timm:v0.1-res2net", "keras", "official"
    url: str
    hash: str  # hex digest (or, for "sha256-prefix", its first digits as the source publishes them)
    hash_kind: str  # "sha256", "sha256-prefix" (torch.hub's file-name convention) or "md5" (Keras)
    layout: str  # one of SOURCES: whose key / layer naming the file uses
    preprocessing: Preprocessing
    top1: float | None  # ImageNet-1k top-1 accuracy (%) as the source reports it
    license: str
    source: str  # link to the code or page the URL, hash and top-1 were read from
    recommended: bool = False  # the entry weights="imagenet" picks for this model
    note: str = ""

    @property
    def source_name(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def file_name(self) -> str:
        """The name the file has in the cache and must have in the offline folder."""
        return Path(urlparse(self.url).path).name


def hash_prefix_from_url(url: str) -> str:
    """The SHA-256 prefix a torch.hub-style file name carries (``resnet50-11ad3fa6.pth`` -> 11ad3fa6)."""
    found = _HASH_IN_FILE_NAME.search(Path(urlparse(url).path).name)
    if found is None:
        raise ValueError(f"{url}: the file name carries no hash ('<name>-<sha256 prefix>.<ext>')")
    return found.group(1)


# The evaluation transforms the sources publish (torchvision's ImageClassification presets, timm's
# crop_pct 0.875, Keras' preprocess_input modes).
TIMM_EVAL = Preprocessing.resized(224, 256, IMAGENET_MEAN, IMAGENET_STD)  # crop_pct 0.875, bilinear
KERAS_TF_EVAL = Preprocessing.resized(224, 224, KERAS_TF_MEAN, KERAS_TF_STD, keras_mode="tf")
KERAS_TORCH_EVAL = Preprocessing.resized(224, 224, IMAGENET_MEAN, IMAGENET_STD, keras_mode="torch")

TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"
KERAS_LICENSE = "MIT (keras-applications)"


def torchvision_weights(
    version: str,
    url: str,
    top1: float,
    weights_class: str,
    module: str,
    *,
    resize_size: int,
    recommended: bool = False,
) -> PretrainedWeights:
    """A torchvision ``<Model>_Weights.<version>`` entry; the hash is the SHA-256 prefix in its file name.

    ``resize_size`` is the entry's ``ImageClassification(crop_size=224, resize_size=...)``
    (256 when torchvision leaves the default; 232 for the new-recipe weights).
    """
    return PretrainedWeights(
        tag=f"torchvision:{version}",
        url=url,
        hash=hash_prefix_from_url(url),
        hash_kind="sha256-prefix",
        layout="torchvision",
        preprocessing=Preprocessing.resized(224, resize_size, IMAGENET_MEAN, IMAGENET_STD),
        top1=top1,
        license=TORCHVISION_LICENSE,
        source=f"https://github.com/pytorch/vision/blob/v0.29.1/torchvision/models/{module}.py "
        f"({weights_class}.{version}: url, transforms, acc@1)",
        recommended=recommended,
    )


# -- verifying ------------------------------------------------------------------------------------
def new_hasher(hash_kind: str) -> Any:
    """A hashlib object of ``hash_kind`` (one of :data:`HASH_KINDS`)."""
    if hash_kind not in HASH_KINDS:
        raise ValueError(f"hash kind must be one of {sorted(HASH_KINDS)}, got {hash_kind!r}")
    return hashlib.md5(usedforsecurity=False) if hash_kind == "md5" else hashlib.sha256()


def hash_matches(expected: str, hash_kind: str, digest: str) -> bool:
    """Whether ``digest`` is the ``expected`` hash (for "sha256-prefix": begins with it)."""
    return digest.startswith(expected) if hash_kind == "sha256-prefix" else digest == expected


def _matches(entry: PretrainedWeights, digest: str) -> bool:
    return hash_matches(entry.hash, entry.hash_kind, digest)


def _mismatch(entry: PretrainedWeights, where: str, digest: str) -> ChecksumError:
    return ChecksumError(
        f"{where}: {entry.hash_kind} mismatch for {entry.file_name} ({entry.tag}): expected {entry.hash}, got {digest}"
    )


def file_digest(path: Path, entry: PretrainedWeights | str) -> str:
    """The hex digest of ``path`` in the kind of hash ``entry`` publishes (or the kind named)."""
    hasher = new_hasher(entry if isinstance(entry, str) else entry.hash_kind)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify_file(path: Path, entry: PretrainedWeights) -> None:
    """Raise :class:`ChecksumError` (expected vs got) unless ``path`` has the published hash."""
    digest = file_digest(path, entry)
    if not _matches(entry, digest):
        raise _mismatch(entry, str(path), digest)


# -- fetching -------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """torch's hub checkpoint folder, shared with torchvision and timm (``$TORCH_HOME`` moves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_dir(weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder users drop weights files into: ``weights_dir`` or ``$RESNEXUS_WEIGHTS_DIR``."""
    folder = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_DIR_ENV)
    return Path(folder).expanduser() if folder else None


def fetch_weights(
    entry: PretrainedWeights, *, weights_dir: str | os.PathLike[str] | None = None, progress: bool | None = None
) -> Path:
    """A verified local copy of ``entry``'s file: the offline folder, the hub cache, or one download.

    ``progress`` shows a progress bar; by default only when stderr is a terminal.
    """
    folder = offline_dir(weights_dir)
    if folder is not None:
        dropped = folder / entry.file_name
        if dropped.is_file():
            verify_file(dropped, entry)  # a user's file is never deleted, only refused
            logger.info("using %s from the offline folder (%s verified)", dropped, entry.hash_kind)
            return dropped
    target = cache_dir() / entry.file_name
    if target.is_file():
        digest = file_digest(target, entry)
        if _matches(entry, digest):
            return target
        logger.warning("damaged cached file, downloading it again: %s", _mismatch(entry, str(target), digest))
        target.unlink()
    drop_in = folder if folder is not None else target.parent
    hint = (
        f"To use these weights without network, download {entry.url} on a machine with network and "
        f"put the file, named {entry.file_name}, in {drop_in}"
        + ("" if folder is not None else f" (or in the folder ${WEIGHTS_DIR_ENV} names)")
    )
    download(
        entry.url,
        target,
        expected=entry.hash,
        hash_kind=entry.hash_kind,
        hint=hint,
        progress=progress,
        describe=f"{entry.file_name} ({entry.tag})",
    )
    return target


def download(
    url: str,
    target: str | os.PathLike[str],
    *,
    expected: str | None,
    hash_kind: str = "sha256",
    hint: str = "",
    progress: bool | None = None,
    describe: str | None = None,
) -> str:
    """Download ``url`` to ``target``, checked: the one way resnexus fetches a file.

    The file is streamed into a temporary file beside ``target`` and hashed while it arrives; it
    is renamed into place only when its length is the announced one and its digest is
    ``expected`` (:class:`ChecksumError` otherwise), so ``target`` never holds half a file or a
    wrong one. ``expected=None`` (a URL nobody published a hash for) keeps the file and logs its
    digest. Returns the hex digest; network failures are a :class:`DownloadError` ending in ``hint``.
    """
    target = Path(target)
    show = sys.stderr.isatty() if progress is None else progress
    describe = describe or target.name
    logger.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            expected_size = int(response.headers.get("Content-Length") or 0) or None
            hasher = new_hasher(hash_kind)
            received = 0
            with atomic_write(target, "wb") as out, _progress_bar(expected_size, target.name, show) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if expected_size is not None and received != expected_size:
                    raise DownloadError(f"download of {url} was cut off: {received} of {expected_size} bytes. {hint}")
                digest = hasher.hexdigest()
                if expected is not None and not hash_matches(expected, hash_kind, digest):
                    # raised inside atomic_write: the temporary file is deleted
                    raise ChecksumError(
                        f"{url}: {hash_kind} mismatch for {describe}: expected {expected}, got {digest}"
                    )
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {url}: HTTP {error.code} {error.reason}. {hint}") from error
    except urllib.error.URLError as error:
        raise DownloadError(f"could not download {url}: {error.reason}. {hint}") from error
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
        raise DownloadError(f"download of {url} was cut off ({error!r}). {hint}") from error
    if expected is None:
        logger.warning(
            "%s has no published hash, so it was not verified; its %s is %s (append #sha256=<digest> to the URL "
            "to have it checked)",
            url,
            hash_kind,
            digest,
        )
    return digest


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(total: int | None, name: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm import tqdm  # here: only a terminal download needs it

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, in the index order of every catalog entry's classifier.

    torchvision publishes them with its weights (``<Model>_Weights.<tag>.meta["categories"]``);
    the Keras applications use the same ILSVRC-2012 index order, so one list serves every source.
    """
    from torchvision.models import ResNet50_Weights  # ~0.1 s, only when ImageNet classes are wanted

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
