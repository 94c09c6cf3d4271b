"""The tests' side of a graded run: call the candidate, check its answers, then write the pass token.

Started as ``python -I -S checker.py <job fd> <requests fd> <replies fd> <token fd> <ready fd>``, before
the candidate exists. It first makes itself undumpable (no ``ptrace``, no reading its memory or
file descriptors through ``/proc``), reads its job (the tests and the token) from a pipe that only it
holds, and says it is ready; only then is the candidate started. The tests run here, with this
process's own builtins, against values that come back from the candidate as plain data
(:mod:`wire`). The token is written after the last check and nowhere else, so a candidate that
exits early, patches builtins, strips asserts or returns an always-equal object never produces it.

Only the entry point and the names the trusted prompt defines cross from the candidate into the test's
globals (the prompt's own helpers, where the prompt runs alone, are the checker's): a candidate that
defines ``abs``, ``range``, ``set`` or ``zip`` changes nothing in the test, which keeps the real builtins.

Input/output cases follow LiveCodeBench's judge (``lcb_runner/evaluation/testing_util.py``): standard
output matches when its stripped lines are as many as the expected ones and each is identical or holds
the same numbers token by token, compared as exact decimals; a returned value matches when it equals
the expected JSON value (a tuple counts as a list). The one leniency is evalplus's: where the expected
number is a float (``0.3333333``, not ``7``), 1e-6 (relative or absolute) is allowed. Integers compare
exactly, so neither ``1e9`` nor ``1000000000`` passes for ``1000000007``.
"""

import ast
import builtins
import ctypes
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402

wire.allow_big_ints()

PR_SET_DUMPABLE = 4


class CandidateGone(BaseException):
    """The candidate stopped answering: no test can pass after this (not an ``Exception``, so a
    test's own ``except Exception`` cannot swallow it)."""


class Channel:
    def __init__(self, requests_fd: int, replies_fd: int) -> None:
        self.requests = os.fdopen(requests_fd, "wb")
        self.replies = os.fdopen(replies_fd, "rb")
        self.broken = False
        self.first: dict = {}

    def ask(self, message: dict) -> dict:
        if self.broken:
            raise CandidateGone("the candidate stopped answering")
        try:
            wire.send(self.requests, message)
            reply = wire.receive(self.replies)
        except (OSError, ValueError) as exc:
            reply = None
            sys.stderr.write(f"checker: bad reply from the candidate: {exc}\n")
        if reply is None:
            self.broken = True
            raise CandidateGone("the candidate stopped answering")
        return reply


def raise_from(reply: dict) -> None:
    """Re-raise the candidate's exception here as a builtin of the same name (else RuntimeError)."""
    name, message = reply["raise"]
    kind = getattr(builtins, str(name), None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    raise kind(message)


def value_of(reply: dict):
    if "raise" in reply:
        raise_from(reply)
    return wire.decode(reply["value"])


def write_back(args: tuple, after: object) -> None:
    """Mirror in-place changes the candidate made to mutable arguments."""
    if not isinstance(after, list) or len(after) != len(args):
        return
    for old, new in zip(args, after):
        if type(old) is list and type(new) is list:
            old[:] = new
        elif type(old) is dict and type(new) is dict:
            old.clear()
            old.update(new)
        elif type(old) is set and type(new) is set:
            old.clear()
            old.update(new)
        elif type(old) is bytearray and type(new) is bytearray:
            old[:] = new


def proxy(channel: Channel, name: str):
    def call(*args, **kwargs):
        reply = channel.ask({"call": name, "args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)})
        value = value_of(reply)
        write_back(args, wire.decode(reply["args"]))
        return value

    call.__name__ = call.__qualname__ = name
    return call


def defined_names(prompt: str) -> set:
    """The top-level names the prompt binds: its functions, classes, constants and imports."""
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):  # a prompt cut mid-statement: its complete def and class lines
        return set(re.findall(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)", prompt, re.MULTILINE))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        else:
            for target in ast.walk(node):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    names.add(target.id)
    return names


def check_module(job: dict, channel: Channel) -> None:
    """HumanEval/MBPP: the trusted prompt's helpers, the candidate's entry point (and what the prompt
    defines but could not give) by proxy, then the test, with the checker's own builtins."""
    scope = {"__name__": "__check__"}
    try:
        exec(compile(job["prompt"], "<prompt>", "exec"), scope)
    except Exception:
        scope = {"__name__": "__check__"}  # a prompt that does not run alone brings no helpers
    allowed = defined_names(job["prompt"]) - set(scope)
    for name in channel.first["ready"]:
        if name == job["entry_point"] or name in allowed:
            scope[name] = proxy(channel, name)
    exec(compile(job["test"], "<test>", "exec"), scope)
    entry = job["entry_point"]
    if entry not in scope:
        raise NameError(f"the program defines no {entry!r}")
    scope["check"](scope[entry])


def close(got: float, want: float) -> bool:
    """Within 1e-6 of a float reference, relatively or absolutely (evalplus's tolerance for float answers)."""
    try:
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
    except (OverflowError, TypeError):
        return False


def same(got, want) -> bool:
    """A returned value against the expected JSON value: equal (a tuple counts as a list), a float reference
    within :func:`close`."""
    if isinstance(want, float):
        return type(got) in (int, float) and close(got, want)
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return got == want


INTEGER = re.compile(r"[+-]?[0-9]+")


def same_line(got: str, want: str) -> bool:
    """One stripped output line: identical, or the same numbers (exact decimals; a float reference within
    :func:`close`)."""
    if got == want:
        return True
    from decimal import Decimal

    try:
        numbers = [(Decimal(g), Decimal(w), w) for g, w in zip(got.split(), want.split(), strict=True)]
        return all(g == w or (not INTEGER.fullmatch(text) and close(float(g), float(w))) for g, w, text in numbers)
    except (ArithmeticError, ValueError):  # not numbers (or a signalling NaN), or not as many
        return False


def same_text(got: str, want: str) -> bool:
    """Standard output against the expected output, line by line (LiveCodeBench's judge)."""
    got_lines = [line.strip() for line in got.strip().split("\n")]
    want_lines = [line.strip() for line in want.strip().split("\n")]
    return len(got_lines) == len(want_lines) and all(same_line(g, w) for g, w in zip(got_lines, want_lines))


def check_io(job: dict, channel: Channel) -> None:
    """LiveCodeBench: each case's input to the candidate, its output compared here."""
    func = job["func"]
    for number, case in enumerate(job["cases"]):
        if func:
            args = [json.loads(line) for line in case["input"].splitlines() if line.strip()]
            got = value_of(channel.ask({"solution": func, "args": wire.encode(args)}))
            ok = same(got, json.loads(case["output"]))
        else:
            reply = channel.ask({"stdin": case["input"]})
            if "raise" in reply:
                raise_from(reply)
            ok = same_text(reply["stdout"], case["output"])
        if not ok:
            raise AssertionError(f"test {number} failed")


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "checker: cannot make itself undumpable")
    if sys.flags.optimize or not __debug__:
        raise SystemExit("checker: asserts are off (-O); refusing to grade")
    job_fd, requests_fd, replies_fd, token_fd, ready_fd = map(int, sys.argv[1:6])
    with os.fdopen(job_fd, "rb") as f:
        job = json.loads(f.read())
    wire.load_site_if_needed(job.get("prompt", ""), job.get("test", ""))
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    channel = Channel(requests_fd, replies_fd)
    first = wire.receive(channel.replies)  # the candidate's names, once its program has run
    if first is None or "ready" not in first:
        raise SystemExit("checker: the program ended before its tests ran")
    channel.first = first
    (check_module if job["kind"] == "module" else check_io)(job, channel)
    if channel.broken:
        raise SystemExit("checker: the candidate stopped answering")
    os.write(token_fd, ("pass %s\n" % job["token"]).encode())
    os.close(token_fd)


main()
