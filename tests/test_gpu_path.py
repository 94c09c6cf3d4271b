"""The GPU path rehearsed on the CPU: the same code, dtypes and knobs as a paper run, at toy size.

- A student whose preset says bfloat16, trained under ``bf16-mixed`` at a pretrained model's learning rate
  (1e-6), learns: its weights are held in float32 (dear/models/precision.py), so AdamW's small steps are kept.
- No phase of a run (held-out KL, selection pages, evaluation, training) runs the LM head over whole
  sequences or the teacher over more than a micro-batch when the step is chunked and micro-batched.
- ``dear-eval`` moves its model to the trainer's device and computes under its precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dear.evaluate
import dear.train
from dear.models.load import load_model as real_load_model
from dear.models.precision import compute_context, resolve_device, resolve_precision
from dear.train import train

from conftest import TINY_RUN, compose

SMALL_STEP = ["optim.lr=1e-6", "optim.warmup_steps=0", "optim.schedule=constant", "eval.every=0"]


def run(tmp_path: Path, toy_cache: Path, *extra: str, name: str) -> tuple[Path, dict]:
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", *extra])
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_dir, train(cfg, run_dir)


def initial_student(toy_cache: Path) -> dict[str, torch.Tensor]:
    (folder,) = [p for p in toy_cache.iterdir() if p.name.startswith("toy-student")]
    return load_file(str(folder / "model.safetensors"))


def trained_student(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights training updated: the checkpoint's student, as saved (not re-cast)."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


def movement(before: dict, after: dict) -> tuple[float, float]:
    """(share of weight entries that changed, mean |Δw|) over the tensors both hold."""
    changed, total, delta = 0, 0, 0.0
    for k, w0 in before.items():
        w1 = after[k].float()
        changed += int((w1 != w0.float()).sum())
        total += w0.numel()
        delta += float((w1 - w0.float()).abs().sum())
    return changed / total, delta / total


def test_a_bf16_preset_student_learns_at_a_small_learning_rate_under_bf16_mixed(tmp_path, toy_cache):
    """On main before this test, the student was loaded (and AdamW-updated) in bfloat16: at lr 1e-6, 99% of
    its weights stayed exactly as loaded. Now it moves as a float32 student does and exports in bfloat16."""
    bf16_dir, _ = run(
        tmp_path, toy_cache, "model.dtype=bfloat16", "trainer.precision=bf16-mixed", *SMALL_STEP, name="bf16"
    )
    fp32_dir, _ = run(
        tmp_path, toy_cache, "model.dtype=float32", "trainer.precision=bf16-mixed", *SMALL_STEP, name="fp32"
    )
    before = initial_student(toy_cache)
    bf16_after, fp32_after = trained_student(bf16_dir), trained_student(fp32_dir)
    assert all(v.dtype == torch.float32 for v in bf16_after.values()), "the trained weights are not float32"
    share, mean_step = movement(before, bf16_after)
    fp32_share, fp32_step = movement(before, fp32_after)
    assert share > 0.9, f"only {share:.1%} of the weights moved"
    assert fp32_share > 0.9 and 0.5 < mean_step / fp32_step < 2.0
    exported = load_file(str(bf16_dir / "student" / "model.safetensors"))
    assert {v.dtype for v in exported.values()} == {torch.bfloat16}
    assert json.loads((bf16_dir / "student" / "config.json").read_text())["dtype"] == "bfloat16"
    # and the exported copy is the trained weights rounded, not the initial ones
    assert movement(before, exported)[0] > 0.5


class Watch:
    """Forward hooks on a run's models: the rows each LM head call saw, the rows each teacher decoder call saw."""

    def __init__(self):
        self.head_positions: list[int] = []  # positions per sequence in one LM head call
        self.teacher_rows: list[int] = []

    def attach(self, loaded, teacher: bool):
        loaded.model.lm_head.register_forward_hook(
            lambda m, args, out: self.head_positions.append(args[0].shape[-2] if args[0].dim() == 3 else 1)
        )
        if teacher:
            loaded.model.get_decoder().register_forward_hook(
                lambda m, args, kwargs, out: self.teacher_rows.append(kwargs["input_ids"].shape[0]),
                with_kwargs=True,
            )
        return loaded


@pytest.mark.parametrize("method", ["dear", "opd"])
def test_no_phase_runs_the_head_whole_or_the_teacher_past_a_micro_batch(tmp_path, toy_cache, monkeypatch, method):
    """With step.logits=chunked and step.micro_batch_size=2, the held-out KL (kl_prompts=4), the selection
    pages (4 prompts), evaluation and training call the LM head only while generating (one position per
    sequence) and the teacher on at most 2 rollouts at a time. On main before this test, the held-out KL and
    the pages ran both heads over whole sequences and the teacher over every prompt at once."""
    watch = Watch()

    def load_model(preset, *args, **kwargs):
        return watch.attach(real_load_model(preset, *args, **kwargs), teacher=kwargs.get("group") == "teacher")

    monkeypatch.setattr(dear.train, "load_model", load_model)
    _, metrics = run(
        tmp_path,
        toy_cache,
        f"method={method}",
        "step.logits=chunked",
        "step.micro_batch_size=2",
        "eval.kl_prompts=4",
        name=method,
    )
    assert metrics["heldout_reverse_kl"]["before"] > 0 and len(metrics["selection_pages"]) == 2
    assert watch.head_positions and max(watch.head_positions) == 1, sorted(set(watch.head_positions))
    assert watch.teacher_rows and max(watch.teacher_rows) == 2, sorted(set(watch.teacher_rows))


def test_held_out_kl_in_micro_batches_and_chunks_is_the_whole_batch_kl(tmp_path, toy_cache):
    """The bounded held-out KL is the same number as the one computed over the whole batch with full logits."""
    from dear.config.schema import StepConfig
    from dear.distill.rollout import generate
    from dear.distill.step import rollout_reverse_kl

    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}"])
    s = dear.train.train_config(cfg)
    student = real_load_model(s.model, s.cache_dir, s.toy_task, trainable=False)
    teacher = real_load_model(s.teacher, s.cache_dir, s.toy_task, trainable=False)
    torch.manual_seed(0)
    rollout = generate(student.model, student.tokenizer, ["1 2 3 =", "4 5 =", "6 7 8 9 ="], n=2, max_new_tokens=12)
    whole = rollout_reverse_kl(student.model, teacher.model, rollout, len(student.tokenizer))
    parts = rollout_reverse_kl(
        student.model,
        teacher.model,
        rollout,
        len(student.tokenizer),
        step=StepConfig(micro_batch_size=4, logits="chunked", gradient_checkpointing=False),
    )
    assert parts[1] == whole[1] and parts[0] == pytest.approx(whole[0], rel=1e-5)


def test_device_and_precision_rules():
    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("gpu") == torch.device("cuda")
    with compute_context("bf16-mixed", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with compute_context("32-true", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_auto_means_the_gpu_and_bf16_mixed_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed" and resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true" and resolve_device("auto") == torch.device("cpu")


def test_dear_eval_moves_its_model_to_the_device_and_computes_under_the_precision(tmp_path, toy_cache, monkeypatch):
    """dear-eval used to evaluate wherever the model was loaded (the CPU) in whatever format it had."""
    devices, autocast = [], []

    def load_model(*args, **kwargs):
        loaded = real_load_model(*args, **kwargs)
        real_to = loaded.model.to
        loaded.model.to = lambda device, *a, **k: devices.append(device) or real_to(device, *a, **k)
        loaded.model.register_forward_hook(lambda *a: autocast.append(torch.is_autocast_enabled("cpu")))
        return loaded

    monkeypatch.setattr(dear.evaluate, "load_model", load_model)
    tiny_teacher = [o.replace("teacher.", "model.") for o in TINY_RUN[3:6]]  # dear-eval's model: the tiny teacher
    cfg = compose(
        [f"cache_dir={toy_cache}", *tiny_teacher, "benchmark.limit=4", "trainer=cpu", "trainer.precision=bf16-mixed"],
        config_name="eval",
    )
    summary = dear.evaluate.evaluate(cfg, tmp_path)
    assert devices == [torch.device("cpu")]
    assert autocast and all(autocast)
    assert (summary["device"], summary["precision"]) == ("cpu", "bf16-mixed")


def test_gradients_are_freed_before_the_next_rollout(tmp_path, toy_cache, monkeypatch):
    """dear-plan counts the rollout and evaluation without the gradients (4 bytes a parameter): the module frees
    them right after each optimizer step, not at the next step's start."""
    import dear.training.module

    seen = []
    real = dear.training.module.training_rollout

    def rollout(source, student, *args, **kwargs):
        seen.append(sum(p.grad is not None for p in student.parameters()))
        return real(source, student, *args, **kwargs)

    monkeypatch.setattr(dear.training.module, "training_rollout", rollout)
    run(tmp_path, toy_cache, "steps=3", name="grads")
    assert seen == [0, 0, 0]


def test_rollouts_sampled_a_few_prompts_at_a_time_are_one_batch(tmp_path, toy_cache):
    """rollout.prompts_per_call bounds the rollout's KV cache: separate generate calls, joined in the batch layout
    (prompts left-padded to the widest, responses right-padded), score as they did apart."""
    from dear.distill.rollout import concat, generate
    from dear.distill.step import rollout_reverse_kl

    s = dear.train.train_config(compose(TINY_RUN + [f"cache_dir={toy_cache}"]))
    student = real_load_model(s.model, s.cache_dir, s.toy_task, trainable=False)
    teacher = real_load_model(s.teacher, s.cache_dir, s.toy_task, trainable=False)
    torch.manual_seed(0)
    tok = student.tokenizer
    parts = [
        generate(student.model, tok, ["1 2 3 4 5 6 ="], n=2, max_new_tokens=6),
        generate(student.model, tok, ["7 ="], n=1, max_new_tokens=12),
    ]
    joined = concat(parts, tok.pad_token_id)
    assert joined.input_ids.shape[0] == 3 and joined.texts == parts[0].texts + parts[1].texts
    assert not joined.response_mask[:, : joined.prompt_width].any()
    row = 0
    for part in parts:
        for i in range(part.input_ids.shape[0]):
            keep = part.attention_mask[i].bool()
            assert torch.equal(joined.input_ids[row][joined.attention_mask[row].bool()], part.input_ids[i][keep])
            assert torch.equal(joined.position_ids[row][joined.attention_mask[row].bool()], part.position_ids[i][keep])
            row += 1
    vocab = len(tok)
    apart = [rollout_reverse_kl(student.model, teacher.model, p, vocab) for p in parts]
    together = rollout_reverse_kl(student.model, teacher.model, joined, vocab)
    assert together[1] == sum(n for _, n in apart)
    assert together[0] == pytest.approx(sum(kl for kl, _ in apart), rel=1e-4)


def test_a_run_samples_its_prompts_per_call(tmp_path, toy_cache, monkeypatch):
    import dear.distill.sources

    rows = []
    real = dear.distill.sources.generate
    monkeypatch.setattr(dear.distill.sources, "generate", lambda *a, **k: rows.append(len(a[2])) or real(*a, **k))
    _, metrics = run(tmp_path, toy_cache, "rollout.prompts_per_call=2", name="per-call")  # batch_size=3: 2 + 1
    assert rows == [2, 1, 2, 1] and metrics["steps"] == 2 and metrics["status"] == "complete"


def test_the_optimizer_is_fused_except_under_mixed_precision_and_steps_as_the_loop_does():
    """Fused AdamW where Lightning lets a run clip (not under *-mixed, whose plugin refuses a fused optimizer:
    the bf16 test above fails if it is fused there); the same update as torch's default AdamW."""
    from dear.config.schema import OptimConfig
    from dear.models.schedule import fused_for, optimizer

    assert fused_for("32-true") and fused_for("bf16-true")
    assert not fused_for("bf16-mixed") and not fused_for("16-mixed")
    settings = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1, grad_clip=1.0)
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn(5, 3), torch.randn(7)]
    after = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt, sched = optimizer(params, settings, steps=10, fused=fused)
        assert bool(opt.defaults["fused"]) is fused
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
            sched.step()
        after[fused] = [p.detach() for p in params]
    for a, b in zip(after[True], after[False]):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, weights[0] if a.shape == weights[0].shape else weights[1])
