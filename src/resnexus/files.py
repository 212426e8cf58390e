"""Files every layer writes: atomic replacement and the one cache folder.

The bottom of the package (it imports nothing from resnexus), so data, models, engine and reports
can all use it without an import cycle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
def atomic_path(path: str | os.PathLike[str], *, folder: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file (or, with ``folder``, an empty folder) beside ``path`` for a writer that wants
    a name rather than an open file (Keras, TensorFlow); put in ``path``'s place if the ``with`` body
    succeeds, else removed.

    A crash or an exception leaves the previous ``path`` or the new one, never half of one, and no
    temporary behind. ``suffix`` ends the temporary name (``.tmp.keras`` for a writer that checks
    it). A folder cannot be renamed over a non-empty one, so an existing ``path`` is first moved
    aside and deleted only once the new folder is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp / mkdtemp make them private (0600 / 0700); ours are normal files and folders
        os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
        if folder and (path.exists() or path.is_symlink()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if Path(tmp).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush it to disk and rename it over ``path``.

    A crash, a full disk or an exception in the ``with`` body leaves either the previous file or
    the new one, never half of one, and no temporary file behind (:func:`atomic_path`). ``mode`` is
    "w" or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_args) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``Path.write_text`` that never leaves half a file (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def check_writable_folder(path: str | os.PathLike[str], target: str | os.PathLike[str] | None = None) -> None:
    """Refuse a folder that cannot be created or written into, naming ``target`` (default: the folder).

    Missing folders are fine (the writer creates them); what fails is an existing ancestor that is
    a file or that this process may not write into. Checked before any work, so a bad path costs
    one line instead of a traceback after minutes of inference.
    """
    folder = Path(path).expanduser()
    named = Path(target) if target is not None else folder
    ancestor = folder
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {named}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {named}: no permission to write into {ancestor}")


def check_output_folder(
    out: str | os.PathLike[str],
    *,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    outside: Mapping[str, str | os.PathLike[str] | None] | None = None,
    ours: Sequence[str] = (),
    kind: str = "a resnexus run",
    overwrite: bool = False,
    replaces: bool = False,
    flag: str = "--out",
) -> Path:
    """Refuse, before any work, an output folder that would mix what a command writes with what it
    or a later command reads, or with a user's own files; every command that writes a folder calls it.

    ``inputs`` (what -> path: a checkpoint, a run being read) may not be the output; ``outside``
    (what -> folder: a data folder, a weights folder) may not be it or hold it, since whatever is
    written there would be read as input next time (plots as images of a class). An input inside
    the output is fine. An existing folder must be empty or already this command's output (a glob
    of ``ours`` matches in it: ``kind``); anything else is written into only with ``overwrite``, and
    never when the command ``replaces`` the folder whole (its files would be deleted).
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file; {kind} is a folder: give a folder name")
    check_writable_folder(out)
    where = out.resolve()
    for what, path in (inputs or {}).items():
        if path is not None and Path(path).expanduser().resolve() == where:
            raise ValueError(f"{flag} {out} is the {what}, an input of this command; choose another folder")
    for what, path in (outside or {}).items():
        if path is None:
            continue
        folder = Path(path).expanduser().resolve()
        if where == folder or where.is_relative_to(folder):
            raise ValueError(
                f"{flag} {out} is {'the' if where == folder else 'inside the'} {what} {path}: what is written "
                "there would be read as input next time; choose a folder outside it"
            )
    if out.is_dir() and (replaces or not overwrite) and not any(next(out.glob(p), None) for p in ours):
        held = sorted(p.name for p in out.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            how = "it would be replaced whole" if replaces else "or pass --overwrite to write into it anyway"
            raise FileExistsError(
                f"{flag} {out} already holds files that are not {kind} ({shown}); choose a new or empty folder, {how}"
            )
    return out
