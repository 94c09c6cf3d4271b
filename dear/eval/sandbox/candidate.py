"""The candidate's side of a graded run: run the program, then answer the checker's calls.

Started as ``python -S candidate.py <requests fd> <replies fd> <go fd> <program path> <mode>``, it waits
for a byte on the go pipe (sent once the checker is undumpable) before it runs anything. In ``module``
mode the program runs once as ``__main__`` (as ``python program.py`` would run it) and the names it
defines are announced; each request then calls one of them with the arguments it carries. In ``io``
mode each request runs the program afresh, on a given stdin (``stdin``) or as a ``class Solution``
whose method is called (``solution``). This process holds no tests and no pass token: whatever it
does, only the checker can say that the tests passed.
"""

import io
import os
import sys
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402

wire.allow_big_ints()


def error_reply(exc: BaseException) -> dict:
    return {"raise": [type(exc).__name__, str(exc)[:2000]]}


def call_reply(fn, args: list, kwargs: dict) -> dict:
    try:
        value = fn(*args, **kwargs)
        return {"value": wire.encode(value), "args": wire.encode(args)}
    except Exception as exc:  # the candidate's own error is an answer; SystemExit ends the process
        return error_reply(exc)


def run_module(path: str, source: str, requests, replies) -> None:
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    exec(compile(source, path, "exec"), module.__dict__)
    names = sorted(k for k, v in module.__dict__.items() if callable(v) and not k.startswith("__"))
    wire.send(replies, {"ready": names})
    while (request := wire.receive(requests)) is not None:
        fn = module.__dict__.get(request["call"])
        if not callable(fn):
            wire.send(replies, {"raise": ["NameError", f"name {request['call']!r} is not defined"]})
            continue
        args, kwargs = wire.decode(request["args"]), wire.decode(request["kwargs"])
        wire.send(replies, call_reply(fn, args, kwargs))


def run_io(path: str, source: str, requests, replies) -> None:
    code = compile(source, path, "exec")
    wire.send(replies, {"ready": []})
    while (request := wire.receive(requests)) is not None:
        if "solution" in request:
            scope = {"__name__": "solution", "__file__": path}
            try:
                exec(code, scope)
                method = getattr(scope["Solution"](), request["solution"])
            except Exception as exc:
                wire.send(replies, error_reply(exc))
                continue
            wire.send(replies, call_reply(method, wire.decode(request["args"]), {}))
            continue
        sys.stdin = io.TextIOWrapper(io.BytesIO(request["stdin"].encode()))
        sys.stdout = out = io.StringIO()
        try:
            exec(code, {"__name__": "__main__", "__file__": path})
            reply = {"stdout": out.getvalue()}
        except SystemExit as stop:
            reply = {"stdout": out.getvalue()} if stop.code in (None, 0) else error_reply(stop)
        except Exception as exc:
            traceback.print_exc()
            reply = error_reply(exc)
        finally:
            sys.stdout, sys.stdin = sys.__stdout__, sys.__stdin__
        wire.send(replies, reply)


def main() -> None:
    requests = os.fdopen(int(sys.argv[1]), "rb")
    replies = os.fdopen(int(sys.argv[2]), "wb")
    go = int(sys.argv[3])
    path, mode = sys.argv[4], sys.argv[5]
    if os.read(go, 1) != b"g":
        raise SystemExit("sandbox: the checker did not start")
    os.close(go)
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        source = f.read()
    wire.load_site_if_needed(source)
    sys.argv = [path]  # as if run as `python program.py`
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(path)] + [p for p in sys.path if p != here]
    (run_module if mode == "module" else run_io)(path, source, requests, replies)


main()
