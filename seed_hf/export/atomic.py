"""Atomic writes of the export: a folder or file is written beside its destination under a name
that holds the writer's PID and renamed into place when complete, so a reader (or the next
export) sees the previous version or the new one, never a half-written one; what a killed writer
left behind is removed by the next export to the same place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_folder", "atomic_write_text", "remove_dead_partials"]


def _partial(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


def remove_dead_partials(out: str | os.PathLike) -> None:
    """Removes the ``.<name>.partial-PID`` / ``.<name>.old-PID`` siblings of ``out`` that killed
    writers left behind (a running writer's, found by its live PID, is kept)."""
    out = Path(out)
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind not in (f".{out.name}.partial", f".{out.name}.old") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def _replace(new: Path, out: Path) -> None:
    """Puts the finished folder ``new`` at ``out``, replacing what was there, by renames only."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty folder beside ``out`` to write into; when the block ends without an error,
    its contents are made world-readable (a published folder: files 0644, folders 0755) and it
    replaces ``out`` as a whole. On any error (or interruption) it is removed and ``out`` is left
    as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out)
    tmp = _partial(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.rglob("*"):  # safetensors writes 0600
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a sibling file and ``os.replace``: a kill while writing
    leaves the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(path)
    tmp = _partial(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
