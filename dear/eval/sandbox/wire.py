"""Plain-data messages between the checker and the candidate, one JSON object per line.

Values cross as JSON with tagged containers, so what the checker decodes is always a genuine
builtin (``int``, ``float``, ``str``, ``list``, ``dict``, ...) however the candidate built it: an
object whose ``__eq__`` always says yes arrives as its plain value, or not at all.
"""

from __future__ import annotations

import json
import sys

MAX_LINE = 256 << 20  # bytes of one message; more is a protocol error
MAX_ITEMS = 1_000_000  # items taken from an iterator the candidate returns


def load_site_if_needed(*sources: str) -> None:
    """Process site-packages (slow: ~30 ms) only when the code imports something outside the stdlib.

    The sandbox starts its interpreters with ``-S``; this brings ``site`` back for, e.g., numpy.
    """
    import ast

    names = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    if names - set(sys.stdlib_module_names) - {"__future__"}:
        import site

        site.main()


def allow_big_ints() -> None:
    """Big integers are answers too: lift Python's limit on int <-> str conversion (3.11+)."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)


def encode(value: object) -> object:
    """``value`` as JSON-able data; ``TypeError`` for anything that is not plain data."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return ["f", repr(float.__float__(value))]
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return ["c", repr(complex(value).real), repr(complex(value).imag)]
    if isinstance(value, list):
        return ["L", [encode(v) for v in list.__iter__(value)]]
    if isinstance(value, tuple):
        return ["T", [encode(v) for v in tuple.__iter__(value)]]
    if isinstance(value, dict):
        return ["D", [[encode(k), encode(v)] for k, v in dict.items(value)]]
    if isinstance(value, frozenset):
        return ["F", [encode(v) for v in frozenset.__iter__(value)]]
    if isinstance(value, set):
        return ["S", [encode(v) for v in set.__iter__(value)]]
    if isinstance(value, bytes):
        return ["B", bytes(value).hex()]
    if isinstance(value, bytearray):
        return ["A", bytes(value).hex()]
    if isinstance(value, range):
        return ["R", value.start, value.stop, value.step]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a numpy scalar: its Python value
        return encode(value.item())
    if hasattr(value, "__next__") and hasattr(value, "__iter__"):  # generator, map, zip, ...
        items = []
        for item in value:
            items.append(encode(item))
            if len(items) > MAX_ITEMS:
                raise ValueError("the iterator is too long to send")
        return ["I", items]
    raise TypeError(f"cannot pass a {type(value).__name__} between the program and its tests")


def decode(data: object) -> object:
    """The builtin value ``data`` encodes; ``ValueError`` for anything malformed."""
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise ValueError("malformed value")
    tag, rest = data[0], data[1:]
    if tag == "f":
        return float(rest[0])
    if tag == "c":
        return complex(float(rest[0]), float(rest[1]))
    if tag == "B":
        return bytes.fromhex(rest[0])
    if tag == "A":
        return bytearray.fromhex(rest[0])
    if tag == "R":
        return range(int(rest[0]), int(rest[1]), int(rest[2]))
    items = rest[0]
    if not isinstance(items, list):
        raise ValueError("malformed container")
    if tag == "D":
        return {decode(k): decode(v) for k, v in items}
    values = [decode(v) for v in items]
    containers = {"L": list, "T": tuple, "S": set, "F": frozenset, "I": iter}
    if tag not in containers:
        raise ValueError(f"unknown tag {tag!r}")
    return containers[tag](values)


def send(stream, message: dict) -> None:
    stream.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def receive(stream) -> dict | None:
    """The next message, or None when the other side has gone."""
    line = stream.readline(MAX_LINE + 1)
    if not line.endswith(b"\n"):
        return None  # closed, or a line that is too long
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("malformed message")
    return message
