"""The paper's baselines through the same step and evaluation (offline KD, sft), gradient-mass
coverage and selection pictures in metrics.json: tiny toy runs end to end, and the reference
responses sft trains on."""

from __future__ import annotations

import random

import pytest

from dear.config.schema import ConfigError, ToyTaskConfig
from dear.data.toy import ANSWER_SEP, EOS, ToyTask, build_tokenizer, parse_terms, prompt_text
from dear.distill.rollout import from_texts
from dear.distill.sources import reference_solutions
from dear.train import train

from conftest import TINY_RUN, compose


def run(tmp_path, toy_cache, *extra: str):
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", *extra])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return train(cfg, run_dir), run_dir


def test_reference_solutions_are_correct_grouped_and_reproducible():
    task = ToyTaskConfig()
    rng = random.Random(0)
    terms = [ToyTask(task).sample_train(rng) for _ in range(3)]
    prompts = [prompt_text(t) for t in terms]
    refs = reference_solutions(prompts, 4, task, seed=1, offset=10)
    assert len(refs) == 12
    for k, ref in enumerate(refs):  # prompt j's solutions are rows 4j … 4j+3, each with the right answer
        assert ref.endswith(ANSWER_SEP + str(sum(terms[k // 4])) + EOS)
    assert refs == reference_solutions(prompts, 4, task, seed=1, offset=10)
    assert refs != reference_solutions(prompts, 4, task, seed=1, offset=11)  # branches are drawn per prompt
    assert parse_terms(prompts[0]) == terms[0]


def test_from_texts_lays_out_references_like_generate(tmp_path):
    tok = build_tokenizer(tmp_path)
    prompts = ["3+4?", "1+2+3+4?"]
    responses = ["3+4=7#7" + EOS, "1+2=3;+3+4=10#10" + EOS]
    r = from_texts(tok, prompts, responses, max_new_tokens=48, device="cpu")
    assert r.prompt_width == 8
    assert r.response_mask.sum(-1).tolist() == [8, 17]  # every response token and its end-of-text
    assert not r.response_mask[:, :8].any()
    ends = r.input_ids[r.response_mask].tolist()
    assert ends.count(tok.eos_token_id) == 2
    assert r.texts == [x.replace(EOS, "") for x in responses]
    short = from_texts(tok, prompts, responses, max_new_tokens=5, device="cpu")
    assert short.response_mask.sum(-1).tolist() == [5, 5]


@pytest.mark.parametrize("method", ["offline_kd", "sft"])
def test_baselines_train_through_the_same_step(tmp_path, toy_cache, method, monkeypatch):
    """The training responses come from the teacher (offline_kd) or the answer key (sft), never the student."""
    import dear.distill.sources as sources
    from dear.training.module import DistillModule

    samplers, forced = [], []
    real_generate, real_from_texts = sources.generate, sources.from_texts
    monkeypatch.setattr(
        sources, "generate", lambda model, *a, **kw: samplers.append(model) or real_generate(model, *a, **kw)
    )
    monkeypatch.setattr(sources, "from_texts", lambda *a, **kw: forced.append(real_from_texts(*a, **kw)) or forced[-1])
    modules = []
    real_init = DistillModule.__init__
    monkeypatch.setattr(
        DistillModule, "__init__", lambda self, *a, **kw: modules.append(self) or real_init(self, *a, **kw)
    )
    metrics, run_dir = run(tmp_path, toy_cache, f"method={method}")
    assert metrics["steps"] == 2 and metrics["config"]["method"]["name"] == method
    (module,) = modules
    if method == "offline_kd":
        assert samplers == [module.teacher, module.teacher] and not forced
    else:
        assert not samplers and len(forced) == 2
        assert metrics["config"]["loss"]["kind"] == "ce"
        for rollout in forced:  # the answer key: a complete reference's answer is its last running total
            ends = [int(row[m][-1]) for row, m in zip(rollout.input_ids, rollout.response_mask)]
            complete = [t for t, e in zip(rollout.texts, ends) if e == 1]  # end-of-text: not cut at 24 tokens
            assert complete and all(t.split(ANSWER_SEP)[1] == t.split(ANSWER_SEP)[0].split("=")[-1] for t in complete)
    assert metrics["grad_mass_coverage"] == pytest.approx(1.0) and metrics["kept_share"] == pytest.approx(1.0)
    assert 0.0 <= metrics["benchmarks"]["toy"]["accuracy_after"] <= 1.0


def test_grad_mass_coverage_is_averaged_into_metrics(tmp_path, toy_cache):
    metrics, run_dir = run(tmp_path, toy_cache, "method=dear")
    assert 0.0 < metrics["grad_mass_coverage"] < 1.0
    # the picture of what DEAR selects, at the start and the end, on fixed held-out prompts
    pages = metrics["selection_pages"]
    assert [p.rsplit("/", 1)[-1] for p in pages] == ["step_0.html", "step_2.html"]
    assert all('class="tok decision"' in open(p).read() for p in pages)
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("train/grad_mass_coverage")
    logged = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert len(logged) == 2 and metrics["grad_mass_coverage"] == pytest.approx(sum(logged) / 2)
    col = header.split(",").index("train/selected_frac")
    kept = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert metrics["kept_share"] == pytest.approx(sum(kept) / 2) and 0.3 < metrics["kept_share"] < 0.6


def test_sft_needs_reference_solutions():
    from dear.preflight.settings import train_config

    with pytest.raises(ConfigError, match="only data=toy has"):
        train_config(compose(["method=sft", "data=rg-chain_sum"]))
