"""``dear-train`` with a probe: each rank appends, after every training step, a digest of the student's
weights and of the rollout it trained on to ``$DEAR_PROBE_DIR/rank<r>.jsonl``.

Run as a script (``python tests/ddp_probe.py <overrides>``): Lightning's DDP launcher starts the other
ranks by running this same script again, so every rank carries the probe.
"""

from __future__ import annotations

import hashlib
import json
import os

import dear.training.module as module

OUT = os.environ["DEAR_PROBE_DIR"]
_real_rollout = module.training_rollout
_real_end = module.DistillModule.on_train_batch_end
_last: dict[str, str] = {}


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rollout(*args, **kwargs):
    r = _real_rollout(*args, **kwargs)
    _last["rollout"] = _digest([r.input_ids])
    return r


def _end(self, outputs, batch, batch_idx):
    row = {
        "step": int(self.global_step),
        "world": self.trainer.world_size,
        "weights": _digest(self.student.state_dict().values()),
        "rollout": _last["rollout"],
        "prompts": list(batch),
    }
    with open(os.path.join(OUT, f"rank{self.global_rank}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    return _real_end(self, outputs, batch, batch_idx)


module.training_rollout = _rollout
module.DistillModule.on_train_batch_end = _end

if __name__ == "__main__":
    from dear.cli import train

    train()
