"""Named records and the functions they name: the one mechanism behind the selector registry
(`dear.config.methods`) and the problem-kind registry (`dear.data.kinds`). No torch, nothing of dear.

A record names its function as ``"module:attribute"`` so that registering it imports nothing heavy (the
config layer stays free of torch, ``dear.data`` never imports ``dear.eval``); `resolve` imports it on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

Record = TypeVar("Record")


def add(registry: dict[str, Record], name: str, record: Record, what: str) -> Record:
    """Register ``record`` under ``name`` (a name is registered once); ``what`` names the kind of record."""
    if name in registry:
        raise ValueError(f"a {what} named {name} is already registered")
    registry[name] = record
    return record


def lookup(registry: dict[str, Record], name: str, what: str, where: str) -> Record:
    """The record named ``name``; a one-line ValueError naming the registered ones (and ``where`` to add one)."""
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; known {what}s: {known} (register one in {where})")
    return registry[name]


def resolve(function: str | Callable[..., Any]) -> Callable[..., Any]:
    """The function a record names: itself, or ``"module:attribute"`` imported now."""
    if callable(function):
        return function
    module, _, attribute = function.partition(":")
    return getattr(importlib.import_module(module), attribute)
