"""The tests' side of a graded run: call the candidate, check its answers, then write the pass token.

Started as ``python -I -S checker.py <job fd> <requests fd> <replies fd> <token fd> <ready fd>``, before
the candidate exists. It first makes itself undumpable (no ``ptrace``, no reading its memory or
file descriptors through ``/proc``), reads its job (the tests and the token) from a pipe that only it
holds, and says it is ready; only then is the candidate started. The tests run here, with this
process's own builtins, against values that come back from the candidate as plain data
(:mod:`wire`). The token is written after the last check and nowhere else, so a candidate that
exits early, patches builtins, strips asserts or returns an always-equal object never produces it.
"""

import builtins
import ctypes
import json
import math
import os
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


def check_module(job: dict, channel: Channel) -> None:
    """HumanEval/MBPP: the trusted prompt's helpers, the candidate's functions by proxy, then the test."""
    scope = {"__name__": "__check__"}
    try:
        exec(compile(job["prompt"], "<prompt>", "exec"), scope)
    except Exception:
        scope = {"__name__": "__check__"}  # a prompt that does not run alone brings no helpers
    for name in channel.first["ready"]:
        if name == job["entry_point"] or name not in scope:
            scope[name] = proxy(channel, name)
    exec(compile(job["test"], "<test>", "exec"), scope)
    entry = job["entry_point"]
    if entry not in scope:
        raise NameError(f"the program defines no {entry!r}")
    scope["check"](scope[entry])


def same(got, want) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return got == want


def same_text(got: str, want: str) -> bool:
    got, want = got.split(), want.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g != w:
            try:
                if not math.isclose(float(g), float(w), rel_tol=1e-6, abs_tol=1e-6):
                    return False
            except ValueError:
                return False
    return True


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
