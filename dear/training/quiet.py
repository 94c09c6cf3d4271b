"""One line per event on the console: what dear-train silences of the libraries it trains with, each by its message.

- Lightning's own console handler: ``import lightning`` adds one ("INFO: ...") to the ``lightning`` logger, which
  also propagates to the handlers logging was set up with (Hydra's console and run log), so each of Lightning's
  lines came out twice. With those handlers in place, Lightning's go.
- Lightning's advertisements ("💡 Tip: ... litlogger", "... litmodels").
- Lightning's note that ``Trainer.save_checkpoint`` defaults to ``weights_only=False``: dear's checkpoints hold
  the run's whole state (optimizer, streams, curve), which is what it asks for.
- A deprecation torch raises from inside Lightning (``LeafSpec`` in ``lightning/pytorch/utilities/_pytree.py``),
  which no user of dear can act on.

Every other record and warning goes out as before; Hydra's run log (``<run dir>/<job name>.log``) gets every record
but the two above.
"""

from __future__ import annotations

import logging
import warnings

NOTES = {  # logger -> the starts of its messages that are not news to a dear user
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.pytorch.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
}


class DropNotes(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


_FILTERS = {name: DropNotes(starts) for name, starts in NOTES.items()}


def quiet_libraries() -> None:
    """Set the console up as the module docstring says (idempotent: a sweep builds one trainer a job). Call it
    before building the Trainer, which logs the first of these lines."""
    route_lightning_logs()
    for name, f in _FILTERS.items():
        logging.getLogger(name).addFilter(f)  # addFilter adds an instance once
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def route_lightning_logs() -> None:
    """Lightning's records go out once, through the handlers logging was set up with: drop the console handlers
    Lightning adds at import (left alone when the root logger has no handlers: they are then its only output)."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
