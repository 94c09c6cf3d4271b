"""`dear-plan`: the memory arithmetic by hand, against the allocator on a small model, and the command."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import plan_check  # noqa: E402

from dear import plan  # noqa: E402
from dear.plan import Precision, Shape, Workload, plan_phases  # noqa: E402

MIXED = Precision.of("bf16-mixed")

# A Qwen2 small enough to count by hand: H=8, I=16, 2 layers, 2 heads of 4, 1 kv head, V=32, tied head.
TINY = Shape.from_config(
    "tiny",
    dict(
        model_type="qwen2",
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=32,
        tie_word_embeddings=True,
    ),
    "by hand",
)


def workload(**change) -> Workload:
    w = Workload(
        batch_size=2,
        rollout_n=2,
        prompt_tokens=6,
        new_tokens=4,
        micro_batch=2,
        checkpointing=True,
        logits="chunked",
        hidden_states=True,
        selected_share=0.4,
        sampler="student",
        rollout_cache="static",
        temperature=1.0,
        eval_batch=4,
        eval_samples=1,
        eval_new_tokens=4,
        eval_greedy=True,
        kl_prompts=4,
        precision=MIXED,
    )
    return dataclasses.replace(w, **change)


def test_parameter_counts_by_hand_and_public():
    # embedding 32·8; per layer q 8·8+8, k 8·4+4, v 8·4+4, o 8·8, MLP 3·8·16, two norms 2·8; final norm 8
    assert TINY.params == 32 * 8 + 2 * ((64 + 8) + (32 + 4) + (32 + 4) + 64 + 384 + 16) + 8 == 1480
    assert TINY.linear_params == 2 * (64 + 32 + 32 + 64 + 384) + 32 * 8
    table = plan.shape_table()
    qwen = Shape.from_config("qwen-1.5b", table["Qwen/Qwen2.5-1.5B-Instruct"], "table")
    assert qwen.params == 1_543_714_304  # Qwen2.5-1.5B-Instruct's published count
    qwen3 = Shape.from_config("qwen3-4b", table["Qwen/Qwen3-4B"], "table")
    assert qwen3.head_dim == 128 and qwen3.qk_norm and qwen3.params == 4_022_468_096  # "4.0B", tied


def test_per_token_formulas_by_hand():
    # bf16-mixed, L=10: norms 2·(4+4)·8 + 8, casts 5·2·8, attention 4·2·8 + 4·2 + 2·10, MLP 4·2·16
    assert plan.layer_activation_bytes(TINY, 10, MIXED) == 136 + 80 + 64 + 8 + 20 + 128 == 436
    # float32: one saved normalised input per norm instead of five casts, every tensor 4 bytes
    assert plan.layer_activation_bytes(TINY, 10, Precision.of("32-true")) == 136 + 64 + 128 + 8 + 40 + 256
    assert plan.workspace_bytes(151936, 10_000) == 21 * 110 * 151936  # 2**24 // V rows
    assert plan.workspace_bytes(151936, 7) == 21 * 7 * 151936
    assert plan.decode_step_bytes(4, 32, greedy=False, temperature=1.0) == 4 * 32 * 14


def test_phases_by_hand():
    n = TINY.params
    w = workload(prompt_tokens=1)  # a one-token prompt: the last decoding step is the rollout's widest moment
    phases = {p.key if p.counted else "other": p for p in plan_phases(TINY, TINY, w, teacher_bytes=2)}
    state = 4 * n + 4 * n + 8 * n + 2 * n  # weights, gradients, AdamW moments (fp32), the teacher in bf16
    assert phases["optimizer"].peak == state + 4 * n  # foreach AdamW's sqrt(v)
    rollout = phases["rollout"]
    assert rollout.moment == "the last decoding step"
    kv = 2 * 4 * 5 * 4 * (4 + 2)  # layers x rows x 5 tokens x kv_heads·head_dim x (fp32 keys + bf16 values)
    # no gradients: training_step frees them right after each optimizer step
    assert rollout.peak == state - 4 * n + 2 * TINY.linear_params + kv + 4 * 32 * 14
    assert phases["step"].name.endswith("checkpointing on)") and not phases["other"].counted


def test_advice_names_the_knob_and_a_value_that_fits():
    w = workload(batch_size=64, rollout_n=4, new_tokens=4096, micro_batch=32, checkpointing=False)
    student = Shape.from_config("qwen-1.5b", plan.shape_table()["Qwen/Qwen2.5-1.5B-Instruct"], "table")
    phases = {p.key: p for p in plan_phases(student, student, w) if p.counted}
    limit = 70 * plan.GIB
    assert phases["step"].peak > limit
    line = plan.advice(phases["step"], student, student, w, 2, limit)
    assert "step.micro_batch_size=" in line
    fitting = int(line.split("step.micro_batch_size=")[1].split()[0])
    smaller = {p.key: p for p in plan_phases(student, student, dataclasses.replace(w, micro_batch=fitting))}
    assert smaller["step"].peak <= limit
    line = plan.advice(phases["rollout"], student, student, w, 2, 30 * plan.GIB)
    assert "rollout.prompts_per_call=" in line and "still 64 x 4 rollouts a step" in line
    per = int(line.split("rollout.prompts_per_call=")[1].split()[0])
    smaller = {p.key: p for p in plan_phases(student, student, dataclasses.replace(w, prompts_per_call=per))}
    assert smaller["rollout"].peak <= 30 * plan.GIB and smaller["rollout"].name.startswith(f"rollout ({per * 4} x")


# Generation-heavy and small: the KV cache, the activations and the workspace each weigh in the phase
# they belong to, so that a wrong term moves the prediction by more than the tolerance.
MEASURED = plan_check.Case(
    "test qwen2 h64 MHA V=512",
    "qwen2",
    dict(plan_check.qwen2(64, 4, True, vocab=512), intermediate_size=64, num_attention_heads=4, num_key_value_heads=4),
    dict(plan_check.qwen2(96, 2, False, vocab=512), num_attention_heads=4, num_key_value_heads=4),
    prompts=4,
    n=4,
    prompt_tokens=16,
    new_tokens=112,
    micro_batch=4,
    eval_rows=8,
    eval_new_tokens=64,
    kl_rows=8,
)


@pytest.fixture(scope="module")
def measured():
    return plan_check.measure(MEASURED), plan_check.predict(MEASURED)


@pytest.mark.parametrize("phase", ["optimizer", "rollout", "step", "other step", "scoring", "evaluation"])
def test_a_small_run_lands_within_20_percent(measured, phase):
    """Each phase's peak, and its part above the weights, moments and teacher, within 20% of the allocator's."""
    got, want = measured
    assert abs(want[phase] / got[phase] - 1) <= plan_check.TOLERANCE, (phase, want[phase], got[phase])
    above_got, above_want = got[phase] - got["resident"], want[phase] - want["resident"]
    assert abs(above_want / above_got - 1) <= plan_check.TOLERANCE, (phase, above_want, above_got)


def test_the_allocator_accounting_is_exact():
    plan_check.self_test()  # raises on a miscount


def test_dear_plan_names_a_knob_when_a_phase_does_not_fit(capsys):
    assert plan.main(["--gpu-mem", "1.5", "experiment=qwen-1.5b-14b"]) == 1
    out = capsys.readouterr().out
    assert "qwen-14b" in out and "assumed: prompts of 256 tokens" in out
    for phase in ("weights + optimizer step", "rollout (128 x 256+", "training step (b=8", "evaluation ("):
        assert phase in out
    assert "NO" in out and "to fit: " in out and "use a GPU with more memory" in out


def test_dear_plan_fits_a_toy_run(capsys):
    assert plan.main(["--gpu-mem", "80"]) == 0  # the default run: the toy pair
    out = capsys.readouterr().out
    assert "the toy recipe" in out and "NO " not in out and "to fit" not in out


def test_dear_plan_refuses_an_unknown_preset_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        plan.main(["model=qwen-15b"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model preset 'qwen-15b'" in err


def test_dear_plan_refuses_shapes_it_cannot_find_in_one_line(capsys):
    assert plan.main(["experiment=qwen-1.5b-14b", "model.hub_id=someone/unknown-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "someone/unknown-model" in err and "model.path=" in err


def test_the_console_script_and_the_copied_constants():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("dear-plan") == "dear.plan:main"
    from dear import objective
    from dear.models import packaged
    from dear.training.pages import PICTURE_PROMPTS

    assert plan.CHUNK_ELEMENTS == objective.chunked.CHUNK_ELEMENTS
    assert plan.SMOLLM2_DIRNAME == packaged.SMOLLM2_DIRNAME
    assert plan.PICTURE_PROMPTS == PICTURE_PROMPTS
    hub_ids = {
        line.split(":", 1)[1].split("#")[0].strip()
        for p in (ROOT / "conf" / "model").glob("*.yaml")
        for line in p.read_text().splitlines()
        if line.startswith("hub_id:")
    }
    assert hub_ids <= set(plan.shape_table())  # every hub preset has shapes without a download
