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
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
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
    """How the source evaluated the weights: resize the shorter side, centre-crop, normalise.

    ``keras_mode`` names the ``preprocess_input`` mode of Keras files ("tf": x / 127.5 - 1,
    "torch": ImageNet mean / std); ``mean`` / ``std`` are then the same normalisation written on
    [0, 1] pixels, which is what our data pipeline applies.
    """

    input_size: int  # side of the square crop the network sees
    resize_size: int  # shorter side before the centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    keras_mode: str | None = None

    @property
    def crop_fraction(self) -> float:
        return self.input_size / self.resize_size


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
TIMM_EVAL = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)  # crop_pct 0.875, bilinear
KERAS_TF_EVAL = Preprocessing(224, 224, KERAS_TF_MEAN, KERAS_TF_STD, keras_mode="tf")
KERAS_TORCH_EVAL = Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, keras_mode="torch")

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
        preprocessing=Preprocessing(224, resize_size, IMAGENET_MEAN, IMAGENET_STD),
        top1=top1,
        license=TORCHVISION_LICENSE,
        source=f"https://github.com/pytorch/vision/blob/v0.29.1/torchvision/models/{module}.py "
        f"({weights_class}.{version}: url, transforms, acc@1)",
        recommended=recommended,
    )


# -- verifying ------------------------------------------------------------------------------------
def _new_hasher(entry: PretrainedWeights) -> hashlib._Hash:
    return hashlib.md5(usedforsecurity=False) if entry.hash_kind == "md5" else hashlib.sha256()


def _matches(entry: PretrainedWeights, digest: str) -> bool:
    return digest.startswith(entry.hash) if entry.hash_kind == "sha256-prefix" else digest == entry.hash


def _mismatch(entry: PretrainedWeights, where: str, digest: str) -> ChecksumError:
    return ChecksumError(
        f"{where}: {entry.hash_kind} mismatch for {entry.file_name} ({entry.tag}): expected {entry.hash}, got {digest}"
    )


def file_digest(path: Path, entry: PretrainedWeights) -> str:
    """The hex digest of ``path`` in the kind of hash ``entry`` publishes."""
    hasher = _new_hasher(entry)
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
    _download(entry, target, folder, progress=sys.stderr.isatty() if progress is None else progress)
    return target


def _download(entry: PretrainedWeights, target: Path, folder: Path | None, *, progress: bool) -> None:
    """Stream ``entry.url`` into a temporary file beside ``target``; rename it only once verified."""
    drop_in = folder if folder is not None else target.parent
    hint = (
        f"To use these weights without network, download {entry.url} on a machine with network and "
        f"put the file, named {entry.file_name}, in {drop_in}"
        + ("" if folder is not None else f" (or in the folder ${WEIGHTS_DIR_ENV} names)")
    )
    logger.info("downloading %s to %s", entry.url, target)
    try:
        with urllib.request.urlopen(entry.url, timeout=_TIMEOUT_S) as response:
            expected_size = int(response.headers.get("Content-Length") or 0) or None
            hasher = _new_hasher(entry)
            received = 0
            with atomic_write(target, "wb") as out, _progress_bar(expected_size, entry.file_name, progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if expected_size is not None and received != expected_size:
                    raise DownloadError(
                        f"download of {entry.url} was cut off: {received} of {expected_size} bytes. {hint}"
                    )
                digest = hasher.hexdigest()
                if not _matches(entry, digest):  # raised inside atomic_write: the temporary file is deleted
                    raise _mismatch(entry, entry.url, digest)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"could not download {entry.url}: HTTP {error.code} {error.reason}. {hint}") from error
    except urllib.error.URLError as error:
        raise DownloadError(f"could not download {entry.url}: {error.reason}. {hint}") from error
    except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
        raise DownloadError(f"download of {entry.url} was cut off ({error!r}). {hint}") from error


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
