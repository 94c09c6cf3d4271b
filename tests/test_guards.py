"""Non-finite guards: a step with NaN teacher logits is skipped and counted; too many in a row stop the run."""

from __future__ import annotations

import csv

import pytest
import torch

from dear.train import RunStopped, train

from conftest import TINY_RUN, compose


@pytest.fixture
def nan_teacher(monkeypatch):
    """NaN teacher logits during the training steps named in the returned set (1-based); snapshots of the
    student's weights as each training step starts."""
    import dear.training.module

    bad_steps: set[int] = set()
    starts: list[dict[str, torch.Tensor]] = []
    real_step = dear.training.module.distill_step

    def step(student, teacher, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in student.state_dict().items()})
        if len(starts) not in bad_steps:
            return real_step(student, teacher, *args, **kwargs)

        def poison(_module, _inputs, output):
            output.logits.fill_(float("nan"))

        hook = teacher.register_forward_hook(poison, prepend=True)  # before the module's own check
        try:
            return real_step(student, teacher, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(dear.training.module, "distill_step", step)
    return bad_steps, starts


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nan_teacher_logits_skip_the_step_and_are_counted(tmp_path, toy_cache, nan_teacher):
    bad_steps, starts = nan_teacher
    bad_steps.update({2, 3})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=4", "guards.max_skipped_in_a_row=3"]), run_dir)
    assert metrics["steps"] == 4 and metrics["skipped_steps"] == 2
    assert not same(starts[0], starts[1])  # step 1 updated the student
    assert same(starts[1], starts[2]) and same(starts[2], starts[3])  # steps 2 and 3 did not
    with open(run_dir / "csv" / "metrics.csv") as f:
        skipped = [float(r["train/skipped_steps"]) for r in csv.DictReader(f) if r.get("train/skipped_steps")]
    assert skipped == [0, 1, 2, 2]
    assert all(
        torch.isfinite(v).all()
        for v in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"].values()
    )


def test_too_many_in_a_row_stop_with_the_last_good_state(tmp_path, toy_cache, nan_teacher):
    bad_steps, starts = nan_teacher
    bad_steps.update({2, 3, 4, 5})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=6", "guards.max_skipped_in_a_row=2"])
    with pytest.raises(
        RunStopped,
        match=r"^2 steps in a row \(up to step 3\) were skipped for non-finite teacher "
        r"logits .*; the run stopped; checkpoint .*last.ckpt; resume with: dear-train",
    ):
        train(cfg, run_dir)
    assert len(starts) == 3  # stopped after the second bad step
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    good = {f"student.{k}": v for k, v in starts[1].items()}  # the weights after step 1, the last good one
    assert ckpt["global_step"] == 3 and same(good, {k: ckpt["state_dict"][k] for k in good})
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "student").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None, 1e30])
def test_all_finite_finds_any_nan_or_inf_and_is_not_fooled_by_a_norm_that_overflows(bad):
    """The fast path's joint norm overflows for huge finite entries: those are still finite."""
    from dear.training.guards import all_finite

    tensors = [torch.randn(50, 7), torch.randn(300), torch.randn(3, 4, 5)]
    if bad is not None:
        tensors[2][1, 2, 3] = bad
    assert all_finite(tensors) is (bad is None or bad == 1e30)
    assert all_finite([])
