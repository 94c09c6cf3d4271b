"""Programs that run inside the code sandbox, each started by path with ``python <file>``.

* ``bootstrap.py``: builds the sandbox (namespaces, root, limits) and supervises what runs in it;
* ``checker.py``: runs a problem's tests and, after the last check, writes the pass token;
* ``candidate.py``: runs the candidate's program and answers the checker's calls;
* ``wire.py``: the plain-data messages between checker and candidate;
* ``seccomp.py``: the system-call filter of every program the sandbox runs.

They import nothing outside the standard library and this folder. The bootstrap runs outside the
sandbox; it copies the checker, the candidate and the wire into the sandbox's root at ``/run/dear/lib``.
See :mod:`dear.eval.code` for how they fit together.
"""
