"""The teacher stays frozen: unchanged by the run, out of the optimizer, out of the checkpoint."""

from __future__ import annotations

import torch

import dear.train
from dear.train import train

from conftest import TINY_RUN, compose


def test_the_teacher_is_frozen_out_of_the_optimizer_and_out_of_the_checkpoint(tmp_path, toy_cache, monkeypatch):
    loaded: dict = {}
    snapshots: dict = {}
    real_load = dear.train.load_model

    def load_and_snapshot(preset, *args, group: str = "model", **kw):
        m = real_load(preset, *args, group=group, **kw)
        loaded[group] = m
        # taken before the run starts: a copy, not a second read of the same tensors
        snapshots[group] = {k: v.detach().clone() for k, v in m.model.state_dict().items()}
        return m

    monkeypatch.setattr(dear.train, "load_model", load_and_snapshot)
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", "method=opd"])
    train(cfg, tmp_path)

    student, teacher = loaded["model"].model, loaded["teacher"].model
    after = teacher.state_dict()
    assert after.keys() == snapshots["teacher"].keys()
    assert all(torch.equal(after[k], snapshots["teacher"][k]) for k in after), "the run changed the teacher"
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # the same run did train the student (so the comparison above could have seen a change)
    s_after = student.state_dict()
    assert any(not torch.equal(s_after[k], snapshots["model"][k]) for k in s_after)

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert not [k for k in keys if "teacher" in k], "the checkpoint holds teacher weights"
    assert keys == {f"student.{k}" for k in student.state_dict()}

    (opt,) = ckpt["optimizer_states"]
    n_params = sum(len(g["params"]) for g in opt["param_groups"])
    student_params = list(student.parameters())
    assert n_params == len(student_params), "the optimizer holds parameters that are not the student's"
    moments = [opt["state"][i]["exp_avg"].shape for i in sorted(opt["state"])]
    assert moments == [p.shape for p in student_params]
