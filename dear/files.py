"""Outputs that are complete or absent, never half-written: JSON, text and whole folders.

Each is written next to its destination under a hidden temporary name, flushed to disk, then
renamed over it (a rename within a folder is atomic), so a run killed mid-write leaves the previous
version. A full disk or an unwritable folder is a `DearError`: one line that names the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from dear.errors import DearError

# What a full disk, a read-only or foreign folder, or a file where a folder should be raise.
CANNOT_WRITE = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
}


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (disk full, read-only, permission) into one line."""
    try:
        yield
    except OSError as e:
        if e.errno not in CANNOT_WRITE:
            raise
        raise DearError(
            f"cannot write {path}: {e.strerror or e} (free space, make the folder writable, "
            f"or write elsewhere: DEAR_OUTPUTS=/other/folder)"
        ) from e


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that ``path`` is either its previous self or complete."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON so that ``path`` is either absent (or its previous self) or complete."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=float))


def write_dir_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write a folder under a temporary name, then put it at ``path`` (replacing the old one).

    A crash inside ``fill`` leaves ``path`` as it was (the partial folder is removed, or left under a
    hidden ``.name.tmp-*`` name if the process is killed). The swap is two renames: the old folder
    moves aside, the new one takes its name, then the old one is deleted.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with writing(path):
        try:
            tmp.mkdir(parents=True)
            fill(tmp)
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
