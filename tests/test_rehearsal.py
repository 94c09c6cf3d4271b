"""The paper's run rehearsed on the CPU (slow): `dear-train` as a user types it for a real pair, with every knob a
GPU run turns on, then `dear-eval` on the student it exported.

The SmolLM2 pair (the packaged SmolLM2-135M-Instruct and its fine-tune on chain sums, built once into the default
cache) runs the real-math setup (conf/setup/real-math.yaml, picked because the student is a real model) at a
pretrained model's learning rate (1e-6), with the presets' weights in bfloat16, ``trainer.precision=bf16-mixed``,
chunked logits, micro-batches, gradient checkpointing and the template bridge (the teacher reads prompts without
a chat template). Shapes are cut to CPU size: 2 steps of 2 prompts x 2 samples, 24 new tokens, 4 benchmark
problems. Checked: the student's weights moved, no phase ran the LM head over whole sequences or the teacher
over more than a micro-batch, metrics.json and dear-eval's summary are complete::

    make test-slow ARGS=tests/test_rehearsal.py      # or: pytest -m slow -s tests/test_rehearsal.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dear.cli
import dear.evaluate
import dear.train
from dear.models.load import load_model as real_load_model

SHAPES = [
    "steps=2",
    "batch_size=2",
    "rollout.n=2",
    "rollout.max_new_tokens=24",
    "data.limit=16",
    "benchmark.limit=4",
    "benchmark.max_new_tokens=24",
    "eval.kl_prompts=2",
    "eval.batch_size=4",
    "logger=csv",
]
# what a GPU run turns on (the setup's chunked logits, micro-batches of 8 and checkpointing stay as shipped)
GPU_KNOBS = [
    "model.dtype=bfloat16",
    "teacher.dtype=bfloat16",
    "trainer.precision=bf16-mixed",
    "teacher.chat_template=false",  # a teacher that formats prompts its own way: the bridge
    "step.micro_batch_size=2",
]


class Watch:
    def __init__(self):
        self.head_positions: list[int] = []
        self.teacher_rows: list[int] = []

    def load(self, preset, *args, **kwargs):
        loaded = real_load_model(preset, *args, **kwargs)
        loaded.model.get_output_embeddings().register_forward_hook(
            lambda m, a, out: self.head_positions.append(a[0].shape[-2] if a[0].dim() == 3 else 1)
        )
        if kwargs.get("group") == "teacher":
            loaded.model.get_decoder().register_forward_hook(
                lambda m, a, k, out: self.teacher_rows.append(k["input_ids"].shape[0]), with_kwargs=True
            )
        return loaded


def run_cli(monkeypatch, entry, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    entry()


def only_dir(folder: Path) -> Path:
    (found,) = [p for p in folder.iterdir() if p.is_dir()]
    return found


@pytest.mark.slow
def test_the_real_math_run_rehearsed_on_the_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEAR_OUTPUTS", str(tmp_path))
    watch = Watch()
    monkeypatch.setattr(dear.train, "load_model", watch.load)
    train_argv = ["dear-train", "model=smollm2-135m", "teacher=smollm2-135m-chain_sum", *GPU_KNOBS, *SHAPES]
    run_cli(monkeypatch, dear.cli.train, list(train_argv))
    run_dir = only_dir(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    c = metrics["config"]

    # the real-math setup with every GPU knob on
    assert (c["data"]["name"], c["benchmark"]["name"], c["optim"]["lr"]) == ("rg-gsm_symbolic", "math500", 1e-6)
    assert c["step"] == {"micro_batch_size": 2, "logits": "chunked", "gradient_checkpointing": True}
    assert (c["model"]["dtype"], c["teacher"]["dtype"], c["trainer"]["precision"]) == ("bfloat16",) * 2 + (
        "bf16-mixed",
    )
    # metrics.json complete
    bench = metrics["benchmarks"]["math500"]
    assert metrics["status"] == "complete" and metrics["steps"] == 2 and metrics["skipped_steps"] == 0
    assert bench["subset"].startswith("311 of 500") and 0 <= bench["accuracy_after"] <= 1
    assert [row["step"] for row in metrics["curve"]] == [0, 2]
    assert all(math.isfinite(metrics["heldout_reverse_kl"][k]) for k in ("before", "after"))
    assert 0 < metrics["grad_mass_coverage"] <= 1 and 0 < metrics["kept_share"] <= 1
    # no phase ran the LM head over whole sequences, nor the teacher over more than a micro-batch
    assert max(watch.head_positions) == 1 and max(watch.teacher_rows) == 2
    # the student moved at lr 1e-6: its float32 weights against the packaged model's
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    trained = {k.removeprefix("student."): v for k, v in ckpt.items() if k.startswith("student.")}
    initial = load_file(str(Path(smollm2_folder(run_dir)) / "model.safetensors"))
    moved = sum(int((trained[k] != w).sum()) for k, w in initial.items() if k in trained)
    total = sum(w.numel() for k, w in initial.items() if k in trained)
    assert all(v.dtype == torch.float32 for v in trained.values()) and moved / total > 0.5
    exported = load_file(str(run_dir / "student" / "model.safetensors"))
    assert {v.dtype for v in exported.values()} == {torch.bfloat16}

    # dear-eval on the exported student, by the same device and precision rules
    monkeypatch.setattr(dear.evaluate, "load_model", watch.load)
    watch.head_positions.clear()
    argv = [
        "dear-eval",
        "model=smollm2-135m",
        f"model.path={run_dir / 'student'}",
        "model.dtype=bfloat16",
        "benchmark=math500",
        "benchmark.limit=4",
        "benchmark.max_new_tokens=24",
        "trainer.precision=bf16-mixed",
    ]
    run_cli(monkeypatch, dear.cli.evaluate, argv)
    summary = json.loads((only_dir(tmp_path / "eval") / "summary.json").read_text())
    assert summary["n_problems"] == 4 and 0 <= summary["metrics"]["accuracy"] <= 1
    assert (summary["device"], summary["precision"], summary["subset"][:10]) == ("cpu", "bf16-mixed", "311 of 500")
    assert max(watch.head_positions) == 1
    with capsys.disabled():
        print(f"\nrehearsal: {' '.join(train_argv)}\n  then {' '.join(argv)}\n  run dir {run_dir}")
        print(
            f"  steps {metrics['steps']}, mean step {metrics['mean_step_time_s']:.1f} s, "
            f"wall {metrics['wall_time_s']:.0f} s"
        )
        print(
            f"  math500 accuracy {bench['accuracy_before']:.3f} -> {bench['accuracy_after']:.3f}; held-out KL "
            f"{metrics['heldout_reverse_kl']['before']:.4f} -> {metrics['heldout_reverse_kl']['after']:.4f}"
        )
        print(f"  student weights moved: {moved / total:.1%}; exported in bfloat16; LM head at most 1 position a call")
        print(
            f"  dear-eval: accuracy {summary['metrics']['accuracy']:.3f} on {summary['n_problems']} problems, "
            f"{summary['device']}, {summary['precision']}"
        )


def smollm2_folder(run_dir: Path) -> str:
    """The packaged SmolLM2's converted folder in the cache this run used."""
    from dear.models.packaged import materialize_smollm2

    config = json.loads((run_dir / "metrics.json").read_text())["config"]
    return str(materialize_smollm2(Path(config["cache_dir"]).expanduser()))
