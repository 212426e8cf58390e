"""The serve options' defaults and allowed ranges, in one place.

The CLI's flags (:func:`add_flags`, :func:`from_flags`), their ``--help``,
:func:`~resnexus.serve.app.create_app` and the batcher all check against :data:`BOUNDS`, so a value
the server cannot run with (a negative port, a wait that overflows a thread timeout, NaN) is
refused, naming the option, before a model loads or a port is bound. This module needs no FastAPI:
the CLI imports it to parse its flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..data.check import MAX_PIXELS

MIB = 1024 * 1024
MAX_FILE_MB = 1024  # one upload is held in memory: a gigabyte is already generous


@dataclass(frozen=True)
class Bound:
    """An option's allowed values: an ``int`` or a finite ``float`` from ``low`` to ``high``
    (``low`` itself excluded when ``low_open``, ``high`` when ``high_open``)."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    unit: str = ""
    high_open: bool = False

    def describe(self) -> str:
        """The range in words, as --help and the error messages say it."""
        what = "an integer" if self.kind is int else "a number"
        low = f"above {_figure(self.low)} and" if self.low_open else f"from {_figure(self.low)}"
        high = "below" if self.high_open else "up to" if self.low_open else "to"
        unit = f" {self.unit}" if self.unit else ""
        return f"{what} {low} {high} {_figure(self.high)}{unit}"

    def contains(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (value < self.high if self.high_open else value <= self.high)

    def check(self, name: str, value: object) -> None:
        """Raise ``ValueError`` naming ``name`` and the range unless ``value`` lies in it."""
        if not self.contains(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")

    def parse(self, text: str) -> int | float:
        """An argparse ``type=``: the value of ``text``, or ``ArgumentTypeError`` with the range."""
        try:
            value = self.kind(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def _figure(value: float) -> str:
    """A bound as people write it: 65535, 1073741824, 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


BOUNDS: dict[str, Bound] = {
    "port": Bound(int, 1, 65535),
    "max_batch": Bound(int, 1, 1024),
    "max_wait_ms": Bound(float, 0, 10_000, unit="ms"),
    "max_file_mb": Bound(float, 0, MAX_FILE_MB, low_open=True, unit="MB"),
    "max_file_bytes": Bound(int, 1, MAX_FILE_MB * MIB, unit="bytes"),
    "max_files": Bound(int, 1, 1024),
    "max_pixels": Bound(int, 1, 1_000_000_000),
    # the share of prediction sets that hold the true class: 0 and 1 themselves mean no set at all
    "coverage": Bound(float, 0, 1, low_open=True, high_open=True),
}
DEFAULT_COVERAGE = 0.9  # the coverage of a calibrated model's sets when --coverage is not given


def argument_type(name: str) -> Callable[[str], int | float]:
    """The argparse ``type=`` of option ``name`` (a key of :data:`BOUNDS`)."""
    return BOUNDS[name].parse


@dataclass(frozen=True)
class Limits:
    """What one request may carry; larger uploads are refused while they arrive."""

    max_file_bytes: int = 20 * MIB
    max_files: int = 32
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            BOUNDS[field.name].check(field.name, getattr(self, field.name))


@dataclass(frozen=True)
class ServeOptions:
    """How ``resnexus serve`` runs; every field is checked against :data:`BOUNDS` when made
    (``dataclasses.replace`` checks again). ``batching=False`` runs every image as a batch of one.

    ``calibrated=False`` serves the model's raw probabilities even when its run has a calibration;
    ``coverage`` is the prediction sets' coverage (None: :data:`DEFAULT_COVERAGE` for a calibrated
    model, no sets for another; a coverage given for a model without calibration is refused when
    the model loads)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    batching: bool = True
    limits: Limits = dataclasses.field(default_factory=Limits)
    coverage: float | None = None
    calibrated: bool = True

    def __post_init__(self) -> None:
        for name in ("port", "max_batch", "max_wait_ms"):
            BOUNDS[name].check(name, getattr(self, name))
        if self.coverage is not None:
            BOUNDS["coverage"].check("coverage", self.coverage)
            if not self.calibrated:
                raise ValueError(
                    "coverage needs the calibration: --coverage and --no-calibration ask for opposite things"
                )
        if not isinstance(self.limits, Limits):
            raise ValueError(f"limits must be a Limits, got {self.limits!r}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be an address or host name, got {self.host!r}")

    @property
    def batch_limit(self) -> int:
        """The largest batch the batcher forms: ``max_batch``, or 1 without batching."""
        return self.max_batch if self.batching else 1


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str) -> str | None:
    """The warning to log when ``host`` lets other machines reach a server with no authentication."""
    if is_loopback(host):
        return None
    return (
        f"serving on {host}: other machines can reach this server, and it has no authentication; "
        "put it behind a reverse proxy that authenticates (see resnexus serve --help) or bind 127.0.0.1"
    )


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Register ``resnexus serve``'s option flags (``--host`` to ``--no-calibration``) on ``parser``, with
    the defaults of :class:`ServeOptions` and the ranges of :data:`BOUNDS` in their help."""
    default = ServeOptions()

    def bounded(flag: str, name: str, value: float, what: str) -> None:
        text = f"{what}: {BOUNDS[name].describe()} (default {value:g})"
        parser.add_argument(flag, type=argument_type(name), default=value, help=text)

    parser.add_argument(
        "--host", default=default.host, help=f"address to bind (default {default.host}: this machine only)"
    )
    bounded("--port", "port", default.port, "port")
    bounded("--max-batch", "max_batch", default.max_batch, "images gathered into one batch at most")
    bounded("--max-wait-ms", "max_wait_ms", default.max_wait_ms, "how long a batch waits for more images")
    parser.add_argument("--no-batching", action="store_true", help="run every image as a batch of one")
    bounded("--max-file-mb", "max_file_mb", default.limits.max_file_bytes / MIB, "largest upload per image")
    bounded("--max-files", "max_files", default.limits.max_files, "most images per request")
    parser.add_argument(
        "--coverage",
        type=argument_type("coverage"),
        default=None,
        help="the prediction sets' coverage: the share of sets that hold the true class, for images like "
        f"the training ones; {BOUNDS['coverage'].describe()} (default {DEFAULT_COVERAGE:g} when the model "
        "has a calibration, i.e. it is a `train --folds K` run's refit model or fold ensemble; a request "
        "may ask for another with ?coverage=)",
    )
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="serve the model's raw probabilities and top class: no temperature, operating threshold or sets",
    )


def from_flags(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of flags parsed from :func:`add_flags`' arguments."""
    return ServeOptions(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        limits=Limits(max_file_bytes=max(1, round(args.max_file_mb * MIB)), max_files=args.max_files),
        coverage=args.coverage,
        calibrated=not args.no_calibration,
    )
