"""Files every layer writes: atomic replacement and the one cache folder.

The bottom of the package (it imports nothing from resnexus), so data, models, engine and reports
can all use it without an import cycle.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def default_cache_dir(*parts: str) -> Path:
    """The folder resnexus keeps things in between runs, or a sub-folder of it.

    ``$RESNEXUS_HOME`` if set, else ``$XDG_CACHE_HOME/resnexus``, else ``~/.cache/resnexus``.
    One variable moves everything (decoded images, the built-in digits), so a test or a shared
    machine can redirect all of it at once.
    """
    home = os.environ.get("RESNEXUS_HOME")
    if home:
        root = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnexus"
    return root.joinpath(*parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush it to disk and rename it over ``path``.

    A crash, a full disk or an exception in the ``with`` body leaves either the previous file or
    the new one, never half of one, and no temporary file behind. ``mode`` is "w" or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); ours are normal files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``Path.write_text`` that never leaves half a file (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
