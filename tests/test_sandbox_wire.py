"""The plain-data wire between the checker and the candidate: what crosses is always a genuine builtin."""

from __future__ import annotations

import io
import json

import pytest

from dear.eval.sandbox import wire


class AlwaysEqual(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**200,
    1.5,
    float("inf"),
    -0.0,
    "héllo",
    b"\x00\xff",
    bytearray(b"ab"),
    1 + 2j,
    [1, [2, (3,)]],
    (),
    {"a": [1], 2: None, (1, 2): "t"},
    {1, 2},
    frozenset({"x"}),
    range(1, 9, 2),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_plain_values_cross_unchanged(value):
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    assert back == value and type(back) is type(value)


def test_what_arrives_is_a_builtin_whatever_was_sent():
    back = wire.decode(wire.encode([AlwaysEqual(3)]))
    assert type(back[0]) is int and back[0] == 3 and back[0] != 4
    assert wire.decode(wire.encode(x * x for x in range(3))).__next__() == 0  # an iterator stays iterable
    with pytest.raises(TypeError, match="cannot pass a object"):
        wire.encode(object())
    for malformed in (["?", []], [], {"a": 1}, ["L", 5]):
        with pytest.raises((ValueError, TypeError)):
            wire.decode(malformed)


def test_messages_are_lines_and_a_closed_pipe_is_none():
    stream = io.BytesIO()
    wire.send(stream, {"call": "f", "args": wire.encode([1])})
    stream.seek(0)
    assert wire.receive(stream) == {"call": "f", "args": ["L", [1]]}
    assert wire.receive(stream) is None
    assert wire.receive(io.BytesIO(b'{"cut": ')) is None  # a half-written line: the writer died
