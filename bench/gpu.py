"""dear-train's own path on a GPU, phase by phase: measured peak memory against `dear.plan`, rollout speed, step MFU.

    python bench/gpu.py [--experiment qwen-1.5b-14b] [--steps 3] [--peak-tflops T] [--budget-s 480] [--out PATH]
    python bench/gpu.py --cpu-smoke          # the same path at tiny shapes on the CPU: no meaningful number

It calls `dear.train.train` itself, on the config ``dear-train experiment=<pair>`` composes, for ``--steps``
steps with small evaluation (``benchmark.limit`` = one ``eval.batch_size``, ``eval.every=0``: before and after
training only; ``eval.kl_prompts`` = one ``step.micro_batch_size``; ``logger=none``; ``data.limit`` small).
Nothing is copied: the phases are measured by wrapping the project's own functions for the run's length:

- ``rollout``: `dear.training.module.training_rollout` (the training step's sampling, static cache compiled on a GPU);
- ``step``: `dear.training.module.distill_step` (forward, backward over the micro-batches);
- ``optimizer``: the optimizer's ``step`` (a global step hook: Lightning's clipping closure and AdamW);
- ``evaluation``: `dear.eval.runner.Evaluator._generate` (the benchmark's generation);
- ``heldout_kl``: `dear.eval.runner.Evaluator.heldout_reverse_kl` (its sampling and `score_step`);
- ``selection``: `dear.training.pages.selection_page` (a selection page's sampling and scoring).

Each call: synchronise, ``torch.cuda.reset_peak_memory_stats``, time, call, synchronise, then
``torch.cuda.max_memory_allocated`` (weights, gradients, AdamW state and teacher included). On the CPU the
peaks come from the allocator's events as bench/plan_check.py counts them (`AllocationTrace`, started when
the fit starts, plus the bytes of both models' tensors then). Each phase's peak is set against
`dear.plan.plan_phases` for the same composed config and shapes, at the widest prompt the phase saw.

Weights: the pair's own when present (``model.path``/``teacher.path`` or the hub cache, as `dear.plan.find_shape`
finds them); otherwise random-weight models of the same shapes (dear/model_shapes.json), built with
``AutoModelForCausalLM.from_config`` in bf16 and saved with a synthetic byte-level tokenizer of the model's
vocabulary to a temporary folder. Random models almost never sample the end of text, so every response runs to
``max_new_tokens``: the plan's worst case, and the output says so.

Figures: rollout new tokens/s, the mean training-step time (metrics.json's ``mean_step_time_s``) and the
training-side MFU of `distill_step`, ``(6·N_student + 2·N_teacher) · tokens / (seconds · peak FLOP/s)``. N counts
the parameters in matrix products (everything but the input embedding; the LM head once, tied or not); attention's
quadratic term is not counted. Peak FLOP/s: dense bf16 tensor-core peak by device name (table below) or
``--peak-tflops``. ``--budget-s``: once a training step ends with less time left than the first evaluation took,
training stops there (the run still evaluates and ends). Writes ``outputs/bench/gpu.json`` (``gpu-smoke.json``
with ``--cpu-smoke``) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, compose, machine_facts  # noqa: E402

# Dense bf16 tensor-core peak, TFLOP/s (no sparsity); the first name found in the device's name wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
]
PHASES = ("rollout", "step", "optimizer", "evaluation", "heldout_kl", "selection")
# The smoke run's tiny Qwen2 shapes: random weights, a small vocabulary.
SMOKE_SHAPES = {
    "model": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "teacher": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
}
SMOKE_VOCAB = 512
SMOKE_RUN = [  # 2 prompts x 2 samples, one micro-batch of 4, 6 new tokens, 4 benchmark problems
    "batch_size=2",
    "rollout.n=2",
    "step.micro_batch_size=4",
    "model.max_new_tokens=6",
    "eval.batch_size=4",
    "trainer.threads=1",
]
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# Weights: the pair's own, or random ones of the same shapes
# ---------------------------------------------------------------------------------------------


def weights_present(preset) -> bool:
    """The preset's weights load without a download: a local ``path``, or a config.json in the hub cache."""
    from dear.preflight.settings import cached_config

    return bool(preset.path or cached_config(preset.hub_id, preset.revision))


def synthetic_tokenizer(vocab_size: int):
    """A byte-level tokenizer of ``vocab_size`` tokens: pad, end of text, unknown, the 256 bytes, then generated
    tokens ``t259 … t{V-1}``; no merges, so a prompt is one token per byte. (Word-level would be simpler, but
    transformers loads a folder whose config says ``qwen2`` with its Qwen2 tokenizer class, which rebuilds a
    byte-level BPE from the vocabulary: only tokens that are bytes survive that.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    tokens = specials + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += [f"t{i}" for i in range(len(tokens), vocab_size)]
    core = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def save_random_model(config: dict, vocab: int, folder: Path, seed: int) -> None:
    """A random-weight causal LM of ``config``'s shapes in bf16 (built on the GPU when there is one: fast
    initialisation), saved with the synthetic tokenizer to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{**config, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None})
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    synthetic_tokenizer(vocab).save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_pair(overrides: list[str], smoke: bool, folder: Path) -> tuple[list[str], str]:
    """Overrides that point both presets at random-weight models of their shapes, and how they were made."""
    from dear.plan import PlanError, shape_table
    from dear.preflight.settings import train_config

    s = train_config(compose(overrides), machine=False)
    table = shape_table()
    made = []
    for group, preset in (("model", s.model), ("teacher", s.teacher)):
        if smoke:
            config = dict(
                SMOKE_SHAPES[group],
                model_type="qwen2",
                num_key_value_heads=2,
                vocab_size=SMOKE_VOCAB,
                tie_word_embeddings=group == "model",
                max_position_embeddings=4096,
            )
        elif preset.hub_id in table:  # the public config.json's shape fields
            config = dict(table[preset.hub_id])
        else:
            raise PlanError(f"{group}={preset.name}: no shapes for {preset.hub_id} in dear/model_shapes.json")
        made.append((group, config))
    vocab = min(c["vocab_size"] for _, c in made)  # one tokenizer for both: V* = the smaller vocabulary
    extra = []
    for i, (group, config) in enumerate(made):
        path = folder / group
        save_random_model(config, vocab, path, seed=i)
        extra += [f"{group}.path={path}", f"{group}.chat_template=false"]
    how = (
        f"random weights of the pair's shapes ({'tiny Qwen2 shapes, ' if smoke else ''}vocabulary {vocab}, "
        "synthetic byte-level tokenizer): a random model almost never samples the end of text, so every "
        "response runs to max_new_tokens, the worst case for memory"
    )
    return extra, how


# ---------------------------------------------------------------------------------------------
# Measurement: wrappers around the project's functions
# ---------------------------------------------------------------------------------------------


@dataclass
class Call:
    seconds: float
    peak_bytes: int | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    tokens: int | None = None
    window: str | None = None  # the CPU trace's window name


@dataclass
class Recorder:
    """Per phase, one `Call` per call; on a GPU each call's own peak, on the CPU the trace's windows."""

    cuda: bool
    calls: dict[str, list[Call]] = field(default_factory=lambda: {p: [] for p in PHASES})
    trace: object = None  # bench/plan_check.AllocationTrace on the CPU, from the fit's start
    resident: int = 0  # the CPU trace's starting bytes: both models' tensors
    matmul: dict = field(default_factory=dict)  # N per model
    started: float = field(default_factory=time.perf_counter)

    def _sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, phase: str, fn, *args, **kwargs):
        """Call ``fn``, timed, with its peak memory recorded under ``phase``; return what it returns."""
        import torch

        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        window = f"{phase}#{len(self.calls[phase])}"
        t0 = time.perf_counter()
        if self.trace is not None:
            with self.trace.phase(window):
                out = fn(*args, **kwargs)
        else:
            out = fn(*args, **kwargs)
        self._sync()
        call = Call(time.perf_counter() - t0, window=window if self.trace is not None else None)
        if self.cuda:
            call.peak_bytes = torch.cuda.max_memory_allocated()
        self.calls[phase].append(call)
        return out


def prompt_width(evaluator, prompts: list[str]) -> int:
    return max(len(ids) for ids in evaluator.tokenizer(prompts, add_special_tokens=False).input_ids)


def instrument(rec: Recorder, budget_s: float):
    """Install the wrappers (a list of undo functions comes back): the project's functions, called as they are."""
    import torch

    import dear.training.module as module
    import dear.training.pages as pages
    from dear.eval.runner import Evaluator

    undo = []

    def patch(owner, name: str, wrapper) -> None:
        original = getattr(owner, name)
        setattr(owner, name, wrapper(original))
        undo.append(lambda: setattr(owner, name, original))

    def rollout(original):
        def wrapped(source, student, teacher, tokenizer, prompts, settings, **kwargs):
            r = rec.measure("rollout", original, source, student, teacher, tokenizer, prompts, settings, **kwargs)
            call = rec.calls["rollout"][-1]
            call.prompt_tokens, call.new_tokens = r.prompt_width, int(r.response_mask.sum())
            call.tokens = r.input_ids.shape[0] * settings.max_new_tokens  # rows x rollout.max_new_tokens
            return r

        return wrapped

    def step(original):
        def wrapped(student, teacher, rollout, *args, **kwargs):
            if not rec.matmul:
                rec.matmul = {"student": matmul_params(student), "teacher": matmul_params(teacher)}
            out = rec.measure("step", original, student, teacher, rollout, *args, **kwargs)
            rec.calls["step"][-1].tokens = int(rollout.attention_mask.sum())
            rec.calls["step"][-1].prompt_tokens = rollout.prompt_width
            return out

        return wrapped

    def evaluation(original):
        def wrapped(self, model):
            out = rec.measure("evaluation", original, self, model)
            rec.calls["evaluation"][-1].prompt_tokens = prompt_width(self, self.prompts[: self.batch_size])
            return out

        return wrapped

    def heldout(original):
        def wrapped(self, model, teacher, *args, **kwargs):
            out = rec.measure("heldout_kl", original, self, model, teacher, *args, **kwargs)
            width = prompt_width(self, self.prompts[: min(self.kl_prompts, self.batch_size)])
            rec.calls["heldout_kl"][-1].prompt_tokens = width
            return out

        return wrapped

    def selection(original):
        def wrapped(student, teacher, tokenizer, prompts, *args, **kwargs):
            out = rec.measure("selection", original, student, teacher, tokenizer, prompts, *args, **kwargs)
            widths = tokenizer(prompts, add_special_tokens=False).input_ids
            rec.calls["selection"][-1].prompt_tokens = max(len(ids) for ids in widths)
            return out

        return wrapped

    def fit_start(original):
        def wrapped(self):
            original(self)
            if not rec.cuda:  # the CPU's allocator events, from here: both models' tensors are already there
                from plan_check import AllocationTrace

                tensors = [*self.student.parameters(), *self.student.buffers()]
                tensors += [*self.teacher.parameters(), *self.teacher.buffers()]
                rec.resident = sum(t.nbytes for t in tensors)
                rec.trace = AllocationTrace().__enter__()

        return wrapped

    def training_step(original):
        first_eval = []

        def wrapped(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if not first_eval:  # what the end of the run will need again: the first evaluation and page
                first_eval.append(
                    sum(c.seconds for p in ("evaluation", "heldout_kl", "selection") for c in rec.calls[p])
                )
            # the end: the first evaluation and page again, plus the export and the checkpoint
            if time.perf_counter() - rec.started + 1.2 * first_eval[0] + 30 > budget_s:
                log(f"--budget-s {budget_s:.0f}: training stops after step {len(rec.calls['step'])}")
                self.trainer.should_stop = True
            return out

        return wrapped

    patch(module, "training_rollout", rollout)
    patch(module, "distill_step", step)
    patch(pages, "selection_page", selection)
    patch(Evaluator, "_generate", evaluation)
    patch(Evaluator, "heldout_reverse_kl", heldout)
    patch(module.DistillModule, "on_fit_start", fit_start)
    patch(module.DistillModule, "training_step", training_step)

    # The optimizer step (Lightning's closure, with clipping, runs inside it): a global pre/post hook pair.
    pending = {}

    def pre(optimizer, args, kwargs):
        rec._sync()
        if rec.cuda:
            torch.cuda.reset_peak_memory_stats()
        window = f"optimizer#{len(rec.calls['optimizer'])}"
        if rec.trace is not None:
            pending["window"] = rec.trace.phase(window)
            pending["window"].__enter__()
        pending["t0"], pending["name"] = time.perf_counter(), window

    def post(optimizer, args, kwargs):
        rec._sync()
        call = Call(time.perf_counter() - pending["t0"])
        if "window" in pending:
            pending.pop("window").__exit__(None, None, None)
            call.window = pending["name"]
        if rec.cuda:
            call.peak_bytes = torch.cuda.max_memory_allocated()
        rec.calls["optimizer"].append(call)

    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    for handle in (register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)):
        undo.append(handle.remove)
    return undo


def drop_weights_once_loaded(folder: Path):
    """Delete a random model's weight files under ``folder`` once `dear.train.load_model` has read them (the
    14B teacher's 30 GB would otherwise share the disk with the run's checkpoint); returns the undo."""
    import dear.train

    original = dear.train.load_model

    def wrapped(preset, *args, **kwargs):
        loaded = original(preset, *args, **kwargs)
        if preset.path and Path(preset.path).is_relative_to(folder):
            for f in Path(preset.path).glob("*.safetensors"):
                f.unlink()
        return loaded

    dear.train.load_model = wrapped
    return lambda: setattr(dear.train, "load_model", original)


def matmul_params(model) -> int:
    """N: the parameters in matrix products (all but the input embedding; the head once, tied or not)."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embed.numel() + (head.numel() if head is embed else 0)


# ---------------------------------------------------------------------------------------------
# The plan's prediction for each measured phase
# ---------------------------------------------------------------------------------------------


def predictions(settings, shapes: tuple, prompt_tokens: dict[str, int], gpu: bool) -> dict[str, tuple[int, str]]:
    """`dear.plan.plan_phases`'s peak for each measured phase (at the widest prompt it saw), and what it is;
    ``shapes``: the student's and the teacher's `dear.plan.Shape`."""
    from dear.plan import DTYPE_BYTES, PICTURE_PROMPTS, plan_phases, workload

    student, teacher = shapes
    t_bytes = DTYPE_BYTES[settings.teacher.dtype]

    def phase(key: str, w) -> int:
        return next(p for p in plan_phases(student, teacher, w, t_bytes) if p.key == key and p.counted).peak

    out = {}
    for name, width in prompt_tokens.items():
        w = workload(settings, width, gpu=gpu)
        kl_rows = min(w.eval_batch, w.kl_prompts)
        if name == "heldout_kl":  # its sampling (kl rows, temperature 1) and its scoring at the benchmark's length
            sampling = replace(w, eval_batch=kl_rows, eval_samples=1, eval_greedy=False)
            scoring = replace(w, new_tokens=w.eval_new_tokens, hidden_states=False)
            out[name] = (
                max(phase("evaluation", sampling), phase("scoring", scoring)),
                "max(evaluation at the KL's rows, sampled; scoring without selection at the benchmark's length)",
            )
        elif name == "selection":  # a page: 4 prompts sampled to rollout.max_new_tokens, then scored
            sampling = replace(w, eval_batch=PICTURE_PROMPTS, eval_samples=1, eval_new_tokens=w.new_tokens)
            sampling = replace(sampling, eval_greedy=False)
            out[name] = (
                max(phase("evaluation", sampling), phase("scoring", replace(w, kl_prompts=0))),
                "max(evaluation at 4 rows, sampled to rollout.max_new_tokens; scoring of the selection pages)",
            )
        else:
            out[name] = (phase(name, w), f"plan phase {name}")
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def log(line: str) -> None:
    print(f"[gpu] {line}", file=sys.stderr, flush=True)


def peak_flops(cuda: bool, asked_tflops: float | None) -> tuple[float | None, str]:
    import torch

    if asked_tflops:
        return asked_tflops * 1e12, f"--peak-tflops {asked_tflops}"
    if not cuda:
        return None, "no bf16 peak known for a CPU; pass --peak-tflops"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16 (table)"
    return None, f"{name} is not in the table; pass --peak-tflops"


def run_overrides(args, smoke: bool) -> list[str]:
    """dear-train's overrides for a short run of the pair: steps, small evaluation, no logger."""
    from dear.preflight.settings import train_config

    settings = train_config(compose([f"experiment={args.experiment}", *(SMOKE_RUN if smoke else [])]), machine=False)
    micro = settings.step.micro_batch_size or settings.batch_size * settings.rollout.n
    steps = 2 if smoke else args.steps
    return [
        f"experiment={args.experiment}",
        *(SMOKE_RUN if smoke else []),
        f"steps={steps}",
        f"benchmark.limit={settings.eval.batch_size}",  # one evaluation batch
        "eval.every=0",  # before and after training only
        f"eval.kl_prompts={micro}",  # one micro-batch
        "logger=none",
        f"data.limit={max(steps * settings.batch_size, 8)}",
        "checkpoint.every_steps=0",
        *([f"benchmark.max_new_tokens={args.eval_new_tokens}"] if args.eval_new_tokens and not smoke else []),
    ]


def summarise(rec: Recorder, settings, shapes: tuple, gpu: bool, flops_peak: float | None) -> dict:
    """Per phase: calls, seconds, the measured peak and the plan's, and the phase's own figures."""
    peaks = dict(rec.trace.peaks) if rec.trace is not None else {}
    # the widest prompt each phase saw (the optimizer's plan does not depend on it)
    widths = {p: max(c.prompt_tokens or 1 for c in calls) for p, calls in rec.calls.items() if calls}
    predicted = predictions(settings, shapes, widths, gpu) if widths else {}
    phases = {}
    for name, calls in rec.calls.items():
        if not calls:
            phases[name] = {"calls": 0, "peak_gib": None, "peak_how": "never called"}
            continue
        if gpu:
            peak, how = max(c.peak_bytes for c in calls), "torch.cuda.max_memory_allocated, reset before each call"
        elif rec.trace is not None and all(c.window in peaks for c in calls):
            peak = rec.resident + max(peaks[c.window] for c in calls)
            how = "CPU allocator events (bench/plan_check.AllocationTrace) + both models' tensors at the fit's start"
        else:
            peak, how = None, "not measured: no allocator trace covered this call"
        later = [c.seconds for c in calls[1:]] or [calls[0].seconds]
        p = {
            "calls": len(calls),
            "first_call_s": round(calls[0].seconds, 3),
            "mean_s": sum(later) / len(later),  # after the first call (compilation, warm-up), when there are more
            "peak_gib": None if peak is None else peak / GIB,
            "peak_how": how,
            "prompt_tokens": None if name == "optimizer" else widths[name],
        }
        if name in predicted:
            p["plan_gib"], p["plan_how"] = predicted[name][0] / GIB, predicted[name][1]
            p["plan_over_measured"] = p["plan_gib"] / p["peak_gib"] if p["peak_gib"] else None
        if name == "rollout":
            new = [c.new_tokens for c in calls[1:]] or [calls[0].new_tokens]
            p["new_tokens"] = calls[-1].new_tokens
            p["new_tokens_per_s"] = sum(new) / sum(later)
            # 1.0: every response ran to rollout.max_new_tokens (random weights), the plan's worst case
            p["share_of_max_new_tokens"] = sum(c.new_tokens for c in calls) / sum(c.tokens for c in calls)
        if name == "step":
            tokens = [c.tokens for c in calls[1:]] or [calls[0].tokens]
            p["tokens"] = calls[-1].tokens
            p["tokens_per_s"] = sum(tokens) / sum(later)
            flops = (6 * rec.matmul["student"] + 2 * rec.matmul["teacher"]) * sum(tokens)
            p["training_side_mfu"] = flops / sum(later) / flops_peak if flops_peak else None
        phases[name] = p
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny random models on the CPU (the code path)")
    parser.add_argument("--experiment", default="qwen-1.5b-14b", help="conf/experiment/ pair (default qwen-1.5b-14b)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3; 2 with --cpu-smoke)")
    parser.add_argument(
        "--eval-new-tokens",
        type=int,
        default=512,
        help="benchmark.max_new_tokens on the GPU, to fit the budget (default 512; 0: the preset's)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop training early to end within this")
    parser.add_argument("--out", default=None, help="default: outputs/bench/gpu.json (gpu-smoke.json with --cpu-smoke)")
    args = parser.parse_args()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    rec = Recorder(cuda=False)

    import torch

    from dear.files import write_json_atomic
    from dear.plan import Precision, find_shape
    from dear.preflight.settings import train_config
    from dear.train import train

    smoke = args.cpu_smoke
    cuda = not smoke and torch.cuda.is_available()
    if not smoke and not cuda:
        parser.error("no CUDA device: run with --cpu-smoke on a CPU")
    rec.cuda = cuda
    if smoke:
        torch.set_num_threads(1)
    overrides = run_overrides(args, smoke)
    flops_peak, flops_how = peak_flops(cuda, args.peak_tflops)
    facts = machine_facts(torch.get_num_threads(), "gpu.py")
    facts["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    with tempfile.TemporaryDirectory(prefix="dear-bench-gpu-") as tmp:
        s = train_config(compose(overrides), machine=False)
        if not smoke and weights_present(s.model) and weights_present(s.teacher):
            weights = "the pair's own weights (hub cache or model.path/teacher.path)"
        else:
            log("building random-weight models of the pair's shapes ...")
            extra, weights = random_pair(overrides, smoke, Path(tmp))
            overrides += extra
        log(f"dear.train.train with {' '.join(overrides)}")
        cfg = compose(overrides)
        settings = train_config(cfg, machine=False)
        shapes = (
            find_shape(settings.model, settings.cache_dir),
            find_shape(settings.teacher, settings.cache_dir, "teacher"),
        )
        undo = instrument(rec, args.budget_s)
        if str(settings.teacher.path or "").startswith(tmp):
            undo.append(drop_weights_once_loaded(Path(tmp)))
        metrics, error = None, None
        try:
            metrics = train(cfg, Path(tmp) / "run")
        except Exception as err:  # noqa: BLE001  (what was measured before it is still reported)
            error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            log(f"the run failed: {error}\n{traceback.format_exc()}")
        finally:
            if rec.trace is not None:
                rec.trace.__exit__(None, None, None)
            for u in reversed(undo):
                u()
    phases = summarise(rec, settings, shapes, cuda, flops_peak)
    result = {
        "smoke": smoke,
        "machine": facts,
        "settings": {
            "experiment": args.experiment,
            "overrides": [o for o in overrides if ".path=" not in o],
            "weights": weights,
            "steps_run": len(rec.calls["step"]),
            "prompts": settings.batch_size,
            "samples_per_prompt": settings.rollout.n,
            "max_new_tokens": settings.rollout.max_new_tokens,
            "benchmark_max_new_tokens": settings.benchmark.max_new_tokens,
            "step": {
                "micro_batch_size": settings.step.micro_batch_size,
                "logits": settings.step.logits,
                "gradient_checkpointing": settings.step.gradient_checkpointing,
            },
            "precision": Precision.of(settings.trainer.precision, cuda).name,
            "method": settings.method.name,
            "matmul_params": rec.matmul,
            "peak_flops": flops_peak,
            "peak_flops_how": flops_how,
        },
        "phases": phases,
        "mean_step_time_s": (metrics or {}).get("mean_step_time_s"),
        "error": error,
        "elapsed_s": round(time.perf_counter() - rec.started, 1),
    }
    out = Path(args.out or ROOT / "outputs" / "bench" / ("gpu-smoke.json" if smoke else "gpu.json"))
    write_json_atomic(out, result)
    print("\n".join(table(result)))
    print(f"wrote {out}")
    if error:
        sys.exit(1)


def table(result: dict) -> list[str]:
    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    note = " (CPU smoke: tiny shapes, the numbers mean nothing)" if result["smoke"] else ""
    st = result["settings"]
    lines = [
        f"{result['machine']['device']}, torch {result['machine']['torch']}; {result['elapsed_s']:.0f} s{note}",
        f"dear-train {st['experiment']}: {st['steps_run']} steps, {st['weights']}",
        f"{'phase':<12}{'calls':>6}{'measured GiB':>14}{'plan GiB':>10}{'plan/meas':>10}{'mean s':>9}  figures",
    ]
    for name, p in result["phases"].items():
        figures = []
        if "new_tokens_per_s" in p:
            figures.append(f"{p['new_tokens_per_s']:.4g} new tokens/s ({p['share_of_max_new_tokens']:.0%} of max)")
        if "tokens_per_s" in p:
            figures.append(f"{p['tokens_per_s']:.4g} tokens/s, MFU {num(p['training_side_mfu'], '.3f')}")
        if p.get("peak_gib") is None:
            figures.append(p["peak_how"])
        lines.append(
            f"{name:<12}{p['calls']:>6}{num(p.get('peak_gib'), '.4g'):>14}{num(p.get('plan_gib'), '.4g'):>10}"
            f"{num(p.get('plan_over_measured'), '.2f'):>10}{num(p.get('mean_s'), '.3f'):>9}  {', '.join(figures)}"
        )
    lines.append(f"mean training step (metrics.json): {num(result['mean_step_time_s'], '.3f')} s")
    if result["error"]:
        lines.append(f"the run failed: {result['error']}")
    return lines


if __name__ == "__main__":
    main()
