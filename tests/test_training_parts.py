"""The parts around the training step (dear/training/): what each saves in a checkpoint comes back exactly.

End to end, tests/test_resume.py resumes a killed run to the same numbers; here each part's state goes
through ``torch.save``/``torch.load`` (as a checkpoint does) into a fresh part, which must carry on as the
first would have.
"""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import torch

from dear.training.guards import NonFiniteGuard
from dear.training.rng import RandomStreams, rank_seed

from conftest import TINY_RUN, compose


def through_a_file(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def draws(generator: torch.Generator) -> list:
    return [torch.rand(3).tolist(), random.random(), np.random.rand(), torch.rand(2, generator=generator).tolist()]


def one_process(step: int = 5):
    return SimpleNamespace(world_size=1, global_rank=0, global_step=step, should_stop=False)


def test_random_streams_come_back_as_the_next_step_starts():
    streams = RandomStreams(seed=3)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch.rand(4, generator=streams.selection)  # the method=random generator has moved on too
    saved = through_a_file(streams.state_dict())
    expected = draws(streams.selection)

    resumed = RandomStreams(seed=3)
    resumed.load_state_dict(saved)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)  # what happens between loading and the step
    resumed.on_train_start(one_process(), None)
    resumed.on_train_batch_start(one_process(), None, None, 0)
    assert draws(resumed.selection) == expected
    resumed.on_train_batch_start(one_process(6), None, None, 1)  # restored once, not at every step
    assert draws(resumed.selection)[:3] != expected[:3]


def test_each_rank_samples_from_its_own_stream_from_the_step_it_starts_at():
    firsts = []
    for rank in (0, 1):
        streams, trainer = RandomStreams(seed=3), SimpleNamespace(world_size=2, global_rank=rank, global_step=4)
        streams.on_train_start(trainer, None)
        streams.on_train_batch_start(trainer, None, None, 0)
        firsts.append(torch.rand(3))
        assert torch.equal(firsts[-1], torch.rand(3, generator=torch.Generator().manual_seed(rank_seed(3, rank, 4))))
    assert not torch.equal(*firsts)


class Module:
    """Stands for the `DistillModule` the guard decides for: its student, ``log``, ``clip_gradients``."""

    stop_reason = None

    def __init__(self):
        self.student, self.logged = torch.nn.Linear(2, 2), []

    def log(self, name, value, **kwargs):
        self.logged.append((name, value))

    def clip_gradients(self, *args, **kwargs):
        pass


def skip_a_step(guard: NonFiniteGuard, module: Module, trainer) -> None:
    guard.on_train_batch_start(trainer, module, None, 0)
    guard.check_loss(torch.tensor(float("nan")))
    guard.on_before_optimizer_step(trainer, module, torch.optim.SGD(module.student.parameters(), lr=0.1))
    trainer.global_step += 1


def test_guard_counters_travel_in_checkpoints_and_a_resumed_run_stops_on_time():
    teacher, module, trainer = torch.nn.Linear(2, 2), Module(), one_process(step=0)
    guard = NonFiniteGuard(teacher, 3, 0.0, 4)
    skip_a_step(guard, module, trainer)
    skip_a_step(guard, module, trainer)
    assert (guard.skipped, guard.in_a_row, module.stop_reason) == (2, 2, None)
    assert module.logged == [("train/skipped_steps", 1.0), ("train/skipped_steps", 2.0)]

    resumed = NonFiniteGuard(teacher, 3, 0.0, 4)
    resumed.load_state_dict(through_a_file(guard.state_dict()))
    skip_a_step(resumed, module, trainer)  # the third in a row, counted across the checkpoint
    assert resumed.skipped == 3 and trainer.should_stop
    assert module.stop_reason.startswith("3 steps in a row (up to step 3) were skipped for non-finite loss")


def test_the_teacher_check_flags_the_step_and_a_new_step_starts_clean():
    teacher = torch.nn.Linear(2, 2)
    guard = NonFiniteGuard(teacher, 3, 0.0, 4)
    teacher(torch.ones(1, 2))
    assert guard.flagged is None
    with torch.no_grad():
        teacher.weight.fill_(float("inf"))
        teacher(torch.ones(1, 2))  # inf - inf in the output: NaN
    assert guard.flagged == "teacher logits"
    guard.check_loss(torch.tensor(float("nan")))
    assert guard.flagged == "teacher logits"  # the first reason found is the one reported
    guard.on_train_batch_start(one_process(), None, None, 0)
    assert guard.flagged is None


def test_the_module_state_round_trips_through_a_checkpoint():
    from dear.preflight.settings import train_config
    from dear.training.module import DistillModule

    cfg = train_config(compose(TINY_RUN), machine=False)

    def module(stream):
        evaluator = SimpleNamespace(prompts=["1 2 =", "3 ="])
        return DistillModule(cfg, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), None, 7, evaluator, prompts=stream)

    first = module(SimpleNamespace(start=0))
    first.prompts_seen = 12
    first.step_means.add({"train/grad_mass_coverage": 0.25, "train/selected_frac": 0.5}, seconds=1.0)
    first.step_means.add({"train/grad_mass_coverage": 0.75}, seconds=1.0)  # a step whose kept share was not finite
    first.curve.history = [{"step": 0, "accuracy": 0.2}, {"step": 1, "accuracy": 0.3}]
    first.curve.ends = {"toy-long": {"before": {"accuracy": 0.1}}}  # an eval.benchmarks score before training
    first.pages.written = ["run/selection/step_0.html"]  # drawn before the stop, listed after the resume
    checkpoint = {}
    first.on_save_checkpoint(checkpoint)

    stream = SimpleNamespace(start=0)
    resumed = module(stream)
    resumed.on_load_checkpoint(through_a_file(checkpoint))
    assert resumed.prompts_seen == 12 and stream.start == 12  # the prompt stream resumes where the run was
    assert resumed.curve.history == first.curve.history
    assert resumed.curve.ends == first.curve.ends  # not evaluated again on the trained student
    assert resumed.pages.written == first.pages.written
    assert resumed.step_means.means() == {"grad_mass_coverage": 0.5, "kept_share": 0.5}
    assert resumed.configure_callbacks() == [resumed.guard, resumed.streams]
