"""The Lightning side of dear-train: the module (module.py) and its parts: the non-finite guards, the random streams,
the held-out curve, the selection pages, the run means, what a run records, its loggers and preemption."""
