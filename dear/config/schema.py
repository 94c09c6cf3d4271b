"""The schema of every config dear reads: types, ranges and choices, checked right after composition.

A YAML file under ``conf/`` says *what* a run uses; this module says what is *allowed*. Each
config section is a frozen dataclass whose fields carry their type (``Literal`` for choices,
``Annotated[..., Range(...)]`` for bounds); building one checks every field, so a bad value
fails where it is written, in one line that names the key::

    method.decision_ratio must be a number in [0, 1], got 1.5
    model.toy.lr is not a setting of model.toy; valid keys: batch_size, hidden_size, ...

`load` turns a composed config (a plain mapping) into these dataclasses: unknown keys, missing
keys, wrong types and out-of-range values are all refused with a `ConfigError` before anything
is built or loaded. The YAML files are the one table of values: no field has a default, except
that a field typed ``X | None`` may be left out of a YAML file ("not set") and the toy recipes
keep defaults for building small models in code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from dear.config import methods
from dear.config.types import (
    Count,
    Divergence,
    LossKind,
    NonNegative,
    Normalization,
    Positive,
    PositiveInt,
    Range,
    Ratio,
    Schedule,
    Source,
)
from dear.errors import DearError

CONF_DIR = Path(__file__).parents[1] / "conf"  # the packaged presets, one folder per config group (dear/conf/)


class ConfigError(DearError, ValueError):
    """A config value the schema refuses: one line naming the key, what is allowed and what was given."""


# ---------------------------------------------------------------------------------------------
# Checking one value against one type
# ---------------------------------------------------------------------------------------------


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), optional  # noqa: UP007 (built at run time)
    return tp, False


def _describe(tp: Any, show_none: bool = True) -> str:
    tp, optional = _strip_optional(tp)
    suffix = " or None" if optional and show_none else ""
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        rng = next((m for m in meta if isinstance(m, Range)), None)
        return (rng.describe(base is int) if rng else _describe(base)) + suffix
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp))) + suffix
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp)) + suffix
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(tp, getattr(tp, "__name__", str(tp))) + suffix


def _matches(value: Any, tp: Any) -> bool:
    tp, optional = _strip_optional(tp)
    if value is None:
        return optional
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        rng = next((m for m in meta if isinstance(m, Range)), None)
        return _matches(value, base) and (rng is None or rng.holds(float(value)))
    if typing.get_origin(tp) is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def check_value(key: str, value: Any, tp: Any, show_none: bool = True) -> None:
    """Raise a one-line `ConfigError` unless ``value`` is of type ``tp`` (and within its range).

    ``show_none=False``: None is allowed but not worth mentioning (a knob that is simply unused)."""
    if not _matches(value, tp):
        tp_shown, _ = _strip_optional(tp)
        sep = "; got" if typing.get_origin(tp_shown) is Literal else ", got"
        raise ConfigError(f"{key} must be {_describe(tp, show_none)}{sep} {value!r}")


class Schema:
    """Base of every config section: building an instance checks each field's type and range."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self), include_extras=True)
        prefix = getattr(self, "_path", "")
        for f in fields(self):  # type: ignore[arg-type]
            if dataclasses.is_dataclass(hints[f.name]):
                continue  # a nested section checked itself when it was built
            check_value(f"{prefix}{f.name}", getattr(self, f.name), hints[f.name], self.none_is_a_value(f.name))
        self.check()

    def none_is_a_value(self, name: str) -> bool:
        """Whether None is a meaningful setting of field ``name`` (said in its error message)."""
        return True

    def check(self) -> None:
        """Rules across fields; subclasses override."""


def _fields_of(cls: type, data: dict) -> tuple[list[str], list[str]]:
    """(allowed keys, required keys) of a section given its data (a hook lets a section vary them)."""
    if hasattr(cls, "keys_for"):
        return cls.keys_for(data)
    hints = typing.get_type_hints(cls, include_extras=True)
    allowed = [f.name for f in fields(cls) if not f.name.startswith("_")]
    required = [k for k in allowed if not _strip_optional(hints[k])[1]]
    return allowed, required


def load(cls: type, data: Any, path: str = "") -> Any:
    """Build section ``cls`` from a plain mapping: unknown or missing keys and bad values are refused."""
    where = path.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {data!r}")
    if hasattr(cls, "from_data"):
        return cls.from_data(data, path)  # a section whose keys its own record declares (MethodConfig)
    allowed, required = _fields_of(cls, data)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{path}{key} is not a setting of {where}; valid keys: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{where} is missing {', '.join(path + k for k in missing)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name.startswith("_"):
            continue
        value = data.get(f.name)
        inner, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(inner) and value is not None:
            value = load(inner, value, f"{path}{f.name}.")
        values[f.name] = value
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_path", path)
    obj.__init__(**values)
    return obj


# ---------------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyTaskConfig(Schema):
    """The embedded procedural task (``dear/data/toy.py``): a row of digits added as running totals."""

    # Defaults for programmatic use only; they equal conf/toy_task/default.yaml (a test holds them together).
    min_terms: Annotated[int, Range(2)] = 3
    max_terms: PositiveInt = 6
    max_digit: Annotated[int, Range(1, 9)] = 9
    max_chunk: PositiveInt = 2  # a step takes 1 … max_chunk digits: the branch
    held_out: Count = 500
    seed: Count = 1234  # fixes the held-out split, independent of the run's seed

    def check(self) -> None:
        if self.max_terms < self.min_terms:
            raise ConfigError(f"toy_task.max_terms ({self.max_terms}) must be >= toy_task.min_terms ({self.min_terms})")


@dataclass(frozen=True)
class ToyModelSpec(Schema):
    """Architecture and training recipe of a toy model (``dear/models/toy.py``); the cache key hashes it."""

    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    intermediate_size: PositiveInt
    train_steps: PositiveInt
    # Defaults for building test models in code; every preset under conf/ spells all of them.
    batch_size: PositiveInt = 128
    lr: Positive = 3e-3
    seed: Count = 0
    slip_rate: Ratio = 0.1  # share of totals shown miscomputed (loss masked there): see noisy_solution
    schedule: Schedule = "cosine"  # cosine (decays to 0) | constant (after warm-up)

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{self._where()}hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )

    def _where(self) -> str:
        return getattr(self, "_path", "")


@dataclass(frozen=True)
class TuneRecipe(Schema):
    """How a teacher is made from SmolLM2 by fine-tuning on a reasoning-gym task (``dear/models/tuned.py``).

    Supervised steps on chat-formatted problems whose target is the bare ``\\boxed{answer}``;
    the problems come from generator seeds no benchmark run uses. The cache key hashes it all.
    """

    task: str  # a reasoning-gym task, e.g. chain_sum
    options: dict | None  # the task's config fields, e.g. {min_terms: 2, max_terms: 3}
    steps: PositiveInt  # optimizer steps (AdamW, constant learning rate)
    lr: Positive
    batch_size: PositiveInt  # problems per step
    seed: Count  # fixes the training problems, their order and the initialisation of the run


def tune_recipe(preset: str, where: str) -> TuneRecipe:
    """The ``tune:`` recipe of model preset ``preset`` (conf/model/<preset>.yaml); a ConfigError naming ``where``
    when there is no such preset or it is not fine-tuned."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "model" / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"{where}={preset} names no model preset (conf/model/{preset}.yaml)")
    recipe = OmegaConf.to_container(OmegaConf.load(path)).get("tune")
    if recipe is None:
        raise ConfigError(f"{where}={preset}: that model is not fine-tuned here (its preset has no tune: recipe)")
    return load(TuneRecipe, recipe, f"{where}={preset}: tune.")


@dataclass(frozen=True)
class ModelPreset(Schema):
    """Where a model's weights come from and how prompts are formatted for it (conf/model/)."""

    name: str
    source: Literal["hub", "toy", "smollm2", "smollm2-tuned"]
    dtype: Literal["float32", "bfloat16", "float16"]
    chat_template: bool  # format prompts with the tokenizer's chat template
    context_length: PositiveInt
    # The longest response its reasoning needs: rollouts and the real benchmarks read it (${model.max_new_tokens}).
    max_new_tokens: PositiveInt
    # Keyword arguments of the chat template, e.g. {enable_thinking: false} for Qwen3 (student, teacher and bridge).
    chat_template_kwargs: dict | None = None
    path: str | None = None  # a local folder made by save_pretrained; wins over everything else
    hub_id: str | None = None
    revision: str | None = None
    toy: ToyModelSpec | None = None
    tune: TuneRecipe | None = None  # source smollm2-tuned: how the teacher is fine-tuned from SmolLM2

    def check(self) -> None:
        group = getattr(self, "_path", "model.").rstrip(".")
        if self.chat_template_kwargs and not self.chat_template:
            raise ConfigError(f"{group}.chat_template_kwargs needs {group}.chat_template=true (they are its arguments)")
        if self.max_new_tokens >= self.context_length:
            raise ConfigError(
                f"{group}.max_new_tokens={self.max_new_tokens} leaves no room for a prompt in "
                f"{group}.context_length={self.context_length}"
            )
        if self.source == "toy" and self.toy is None and not self.path:
            raise ConfigError(f"{group}.toy (the toy recipe) is required when {group}.source is toy")
        if self.source == "smollm2-tuned" and self.tune is None and not self.path:
            raise ConfigError(f"{group}.tune (the fine-tuning recipe) is required when {group}.source is smollm2-tuned")
        if self.source == "hub" and not self.hub_id and not self.path:
            raise ConfigError(f"{group}.hub_id or {group}.path is required when {group}.source is hub")
        if self.path:
            folder = Path(self.path).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigError(
                    f"{group}.path={folder} holds no Hugging Face model for {self.name} (no "
                    f"config.json); point it at a folder made by save_pretrained"
                )


@dataclass(frozen=True)
class MethodConfig(Schema):
    """A method (conf/method/): the signal D_t it uses, the selector that decides which response tokens carry
    the loss (README.md "The objective"), that selector's knobs, and who writes the responses trained on.

    name: the method's name in tables; divergence: the signal D_t (reverse_kl | forward_kl | jsd | logratio);
    selector: a selector registered in `dear.config.methods` (dear ships all, entropy, dear, tip and random),
    which declares the knobs it reads with their types; knobs: their values, written flat in the method file
    beside the other keys (``method.decision_ratio=0.3``) and read as attributes (``method.decision_ratio``);
    source: student (on-policy), teacher (offline KD) or reference (sft on reference solutions).
    """

    name: str
    divergence: Divergence
    selector: str
    source: Source
    knobs: dict  # the selector's knobs by name (the method file writes them flat; `from_data` gathers them)

    COMMON = ("name", "divergence", "selector", "source")

    @classmethod
    def keys_for(cls, data: dict) -> tuple[list[str], list[str]]:
        """Allowed and required keys of a method file: the common ones plus the knobs its selector declares."""
        path = "method."
        check_value(f"{path}selector", data.get("selector"), Literal[methods.names()])  # type: ignore[valid-type]
        spec = methods.get(data["selector"])
        keys = ["name", "divergence", "selector", *spec.knobs, "source"]
        for key in data:
            if key not in keys:
                reads = "reads no knobs" if not spec.knobs else "does not read it"
                raise ConfigError(
                    f"{path}{key} is not a knob of method={data.get('name')} (selector "
                    f"{data['selector']} {reads}); valid keys: {', '.join(sorted(keys))}"
                )
        return keys, [k for k in keys if k not in spec.optional]

    @classmethod
    def from_data(cls, data: dict, path: str) -> MethodConfig:
        """Build from a method file's flat mapping: the common keys, and the selector's knobs gathered."""
        _, required = cls.keys_for(data)
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"{path.rstrip('.')} is missing {', '.join(path + k for k in missing)}")
        spec = methods.get(data["selector"])
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_path", path)
        obj.__init__(**{k: data[k] for k in cls.COMMON}, knobs={k: data.get(k) for k in spec.knobs})
        return obj

    def check(self) -> None:
        prefix = getattr(self, "_path", "method.")
        check_value(f"{prefix}selector", self.selector, Literal[methods.names()])  # type: ignore[valid-type]
        spec = methods.get(self.selector)
        unused = sorted(set(self.knobs) - set(spec.knobs))
        if unused:
            raise ConfigError(f"selector {self.selector} does not read {', '.join(unused)}")
        for key, tp in spec.knobs.items():
            value = self.knobs.get(key)
            if value is None and key in spec.optional:
                continue  # not set: a rule below says when it must be
            check_value(f"{prefix}{key}", value, tp | None if key in spec.nullable else tp, key in spec.nullable)
        for rule in spec.rules:
            message = rule(self.knobs)
            if message:
                raise ConfigError(message)

    def __getattr__(self, name: str) -> Any:
        knobs = self.__dict__.get("knobs")
        if knobs is not None and name in knobs:
            return knobs[name]
        raise AttributeError(f"method {self.__dict__.get('name')!r} has no setting {name!r}")

    def record(self) -> dict:
        """The method as its file writes it: the common keys and the knobs, flat."""
        return {
            "name": self.name,
            "divergence": self.divergence,
            "selector": self.selector,
            **self.knobs,
            "source": self.source,
        }


@dataclass(frozen=True)
class DataConfig(Schema):
    """Training prompts (conf/data/): the toy task's stream, or a benchmark loader's prompts cycled."""

    name: str
    limit: Count | None = None
    options: dict | None = None  # extra keyword arguments of the loader


@dataclass(frozen=True)
class BenchmarkConfig(Schema):
    """Held-out evaluation (conf/benchmark/): which problems, how long an answer may be, how sampled."""

    name: str
    max_new_tokens: PositiveInt
    samples: PositiveInt  # k responses per problem (pass@k, avg@k)
    temperature: NonNegative  # 0 = greedy
    limit: Count | None = None
    options: dict | None = None
    # The problems' seed: null draws them by the run's seed (each seed its own problems); a number gives every run
    # the same problems, so runs pair problem by problem and the untouched student is evaluated once.
    seed: Count | None = None
    # A fine-tuned model preset (conf/model/<name>.yaml with a tune: recipe): the problems it was tuned on are left
    # out, and so are repeats, so the benchmark holds `limit` distinct problems that model never saw.
    unseen_by: str | None = None

    def check(self) -> None:
        if self.samples > 1 and not self.temperature:
            raise ConfigError(
                f"benchmark.samples={self.samples} needs benchmark.temperature > 0 "
                f"(greedy decoding gives one answer per problem)"
            )
        if self.unseen_by is not None:
            tune_recipe(self.unseen_by, "benchmark.unseen_by")


@dataclass(frozen=True)
class TrainerConfig(Schema):
    """Lightning trainer settings (conf/trainer/)."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"]
    devices: PositiveInt | Literal["auto"]
    precision: Literal["auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"]
    # auto: one device; ddp: one process per device, the student replicated, gradients averaged; fsdp: the
    # student sharded. The teacher is replicated on every device either way.
    strategy: Literal["auto", "ddp", "fsdp"]
    num_nodes: PositiveInt  # machines; each runs `devices` processes (ddp and fsdp only)
    threads: PositiveInt | None = None  # torch intra-op threads; None = torch's default

    def check(self) -> None:
        if self.num_nodes > 1 and self.strategy == "auto":
            raise ConfigError(
                f"trainer.num_nodes={self.num_nodes} needs a data-parallel strategy; use trainer=ddp or trainer=fsdp"
            )


@dataclass(frozen=True)
class LoggerConfig(Schema):
    """Where per-step logs go (conf/logger/): wandb (offline unless offline=false), csv or none."""

    name: Literal["wandb", "csv", "none"]
    project: str | None = None
    entity: str | None = None
    offline: bool | None = None
    group: str | None = None  # W&B group: the runs of one sweep or table (dear-table sets it to the grid's name)
    run_name: str | None = None  # W&B run name; None: dear-<method>[-<what the sweep varies>]-s<seed>

    def check(self) -> None:
        if self.name == "wandb" and (self.project is None or self.offline is None):
            raise ConfigError("logger=wandb needs logger.project and logger.offline")


@dataclass(frozen=True)
class RolloutConfig(Schema):
    n: PositiveInt  # samples per prompt
    temperature: Positive  # sampling temperature of the student
    max_new_tokens: PositiveInt
    cache: Literal["auto", "dynamic", "static"]  # generation's KV cache; auto: static on a GPU, dynamic on the CPU
    compile: bool  # with a static cache on a GPU, generation compiles the forward (torch.compile)
    # prompts sampled in one generate call (n samples each); None: all of a step's at once. A smaller number
    # bounds the rollout's KV cache (dear-plan) without changing how many rollouts a step trains on.
    prompts_per_call: PositiveInt | None = None


@dataclass(frozen=True)
class StepConfig(Schema):
    """How a training step is computed, not what: every setting here leaves the step's gradient the same."""

    micro_batch_size: PositiveInt | None  # rollouts per forward and backward; None = all of a step's at once
    logits: Literal["full", "chunked"]  # full: the models' [B, L, V] logits; chunked: rows from hidden states
    gradient_checkpointing: bool  # recompute the student's activations in backward (less memory, more time)


@dataclass(frozen=True)
class OptimConfig(Schema):
    lr: Positive
    warmup_steps: Count
    schedule: Schedule
    weight_decay: NonNegative
    grad_clip: NonNegative  # 0 turns clipping off


@dataclass(frozen=True)
class LossConfig(Schema):
    kind: LossKind
    normalize: Normalization
    temperature: Positive  # distillation temperature τ
    beta: Ratio  # jsd's mixture weight (the loss and a jsd signal D_t)


@dataclass(frozen=True)
class EvalSettings(Schema):
    every: Count  # evaluate every this many steps (and before and after training); 0 = ends only
    kl_prompts: Count  # held-out prompts sampled for the on-policy reverse KL
    batch_size: PositiveInt
    # More benchmark presets (conf/benchmark/ names) evaluated before and after training, besides `benchmark`
    # (the one the curve follows): a run trains once and is evaluated on many (dear/config/presets.py)
    benchmarks: list = dataclasses.field(default_factory=list)
    # Keep the untouched student's greedy answers under cache_dir/evals and read them back in every later run
    # whose student, benchmark and generation settings are the same (dear/eval/runner.py: Evaluator.answers_key)
    reuse_before: bool = True

    def check(self) -> None:
        bad = [b for b in self.benchmarks if not isinstance(b, str) or not b]
        if bad:
            raise ConfigError(
                f"eval.benchmarks must list benchmark preset names, e.g. [math500,aime24]; got {bad[0]!r}"
            )
        if len(set(self.benchmarks)) < len(self.benchmarks):
            raise ConfigError(f"eval.benchmarks names a benchmark twice: {self.benchmarks}")


@dataclass(frozen=True)
class CheckpointSettings(Schema):
    """When ``checkpoints/last.ckpt`` is written (it is always written at the end and on a stop)."""

    every_steps: Count  # every this many optimizer steps; 0 = not by steps
    every_minutes: NonNegative  # every this many minutes of training; 0 = not by time
    # Keep last.ckpt once the run has finished (its metrics.json written); false removes it then (a finished run
    # keeps its student/, the checkpoint's weights, and loses only the optimizer state: 3x the student on disk)
    keep: bool = True

    def check(self) -> None:
        if self.every_steps and self.every_minutes:
            raise ConfigError(
                f"checkpoint.every_steps={self.every_steps} and checkpoint.every_minutes="
                f"{self.every_minutes} are both set; give one (set the other to 0)"
            )


@dataclass(frozen=True)
class GuardSettings(Schema):
    """What a step with a non-finite loss, gradient or teacher logit does: it is skipped and counted."""

    max_skipped_in_a_row: PositiveInt  # this many skipped steps in a row stop the run (last good state saved)


@dataclass(frozen=True)
class TrainConfig(Schema):
    """Everything ``dear-train`` reads (conf/train.yaml and its groups)."""

    seed: Count
    cache_dir: str
    steps: Count
    batch_size: PositiveInt  # prompts per step
    model: ModelPreset
    teacher: ModelPreset
    method: MethodConfig
    data: DataConfig
    benchmark: BenchmarkConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    toy_task: ToyTaskConfig
    rollout: RolloutConfig
    step: StepConfig
    optim: OptimConfig
    loss: LossConfig
    eval: EvalSettings
    checkpoint: CheckpointSettings
    guards: GuardSettings
    ckpt_path: str | None = None  # a checkpoint to resume from

    def check(self) -> None:
        if self.method.source == "reference" and self.data.name != "toy":
            raise ConfigError(
                f"method={self.method.name} trains on reference solutions, which only data=toy has "
                f"(its worked solutions); got data={self.data.name}"
            )
        rollouts = self.batch_size * self.rollout.n
        across = methods.get(self.method.selector).ranks_across(self.method.name, self.method.knobs)
        if across and (self.step.micro_batch_size or rollouts) < rollouts:
            raise ConfigError(
                f"{across} ranks tokens across all {rollouts} rollouts of a step, but "
                f"step.micro_batch_size={self.step.micro_batch_size} splits them; use step.micro_batch_size=null"
                + (" or method.scope=sequence" if self.method.knobs.get("scope") == "batch" else "")
            )
        if self.trainer.strategy == "fsdp" and self.step.logits == "chunked":
            raise ConfigError(
                "trainer=fsdp shards the LM head's weight outside the forward, which step.logits=chunked reads; "
                "use step.logits=full with fsdp, or trainer=ddp"
            )
        if self.ckpt_path and not Path(self.ckpt_path).expanduser().is_file():
            raise ConfigError(f"ckpt_path={self.ckpt_path} does not exist; give a run's checkpoints/last.ckpt")
        if (self.model.source == "toy") != (self.teacher.source == "toy"):
            raise ConfigError(_toy_pair_error(self.model, self.teacher))
        lengths = [("rollout.max_new_tokens", self.rollout.max_new_tokens, ("model", "teacher"))]
        # the benchmark's responses: the student writes them, the teacher reads them for the held-out KL
        lengths.append(
            (
                "benchmark.max_new_tokens",
                self.benchmark.max_new_tokens,
                ("model", "teacher")[: 1 + bool(self.eval.kl_prompts)],
            )
        )
        for key, tokens, groups in lengths:
            for group in groups:
                check_fits(key, tokens, group, getattr(self, group))


@dataclass(frozen=True)
class EvalAppSettings(Schema):
    batch_size: PositiveInt


@dataclass(frozen=True)
class EvalConfig(Schema):
    """Everything ``dear-eval`` reads (conf/eval.yaml and its groups)."""

    seed: Count
    cache_dir: str
    model: ModelPreset
    benchmark: BenchmarkConfig
    toy_task: ToyTaskConfig
    eval: EvalAppSettings
    trainer: TrainerConfig  # the device and precision, by dear-train's rules (dear/models/precision.py); one process

    def check(self) -> None:
        if self.trainer.strategy != "auto" or self.trainer.devices not in (1, "auto") or self.trainer.num_nodes > 1:
            raise ConfigError(
                f"dear-eval runs on one device; got trainer.strategy={self.trainer.strategy} "
                f"trainer.devices={self.trainer.devices} (use trainer=auto, trainer=gpu or trainer=cpu)"
            )
        check_fits("benchmark.max_new_tokens", self.benchmark.max_new_tokens, "model", self.model)


def check_fits(key: str, tokens: int, group: str, preset: ModelPreset) -> None:
    """Refuse a response length that alone overflows a model's context (the prompt is checked once tokenised)."""
    if tokens > preset.context_length:
        raise ConfigError(
            f"{key}={tokens} is more than {group}.context_length={preset.context_length} ({preset.name} reads at "
            f"most {preset.context_length} tokens, prompt included); set {key} below {preset.context_length}"
        )


def _toy_pair_error(model: ModelPreset, teacher: ModelPreset) -> str:
    """A toy model paired with a real one: name a real partner (from conf/experiment/ where one pairs it)."""
    real, toy, group, other = (
        (model, teacher, "model", "teacher") if teacher.source == "toy" else (teacher, model, "teacher", "model")
    )
    pairs, role = _named_pairs(group, real.name), "teacher" if other == "teacher" else "student"
    if pairs:
        named = ", ".join(f"experiment={experiment}" for experiment, _ in pairs)
        fix = f"name a real {role}, e.g. {other}={pairs[0][1]}, or a pair from conf/experiment/: {named}"
    else:
        fix = f"name a real {role} that shares its tokenizer ({other}=<preset>, conf/{other}/)"
    return (
        f"{group}={real.name} is a real model but {other}={toy.name} is a toy one (source: toy), and the two share "
        f"no tokenizer; {fix}"
    )


def _named_pairs(group: str, name: str) -> list[tuple[str, str]]:
    """(experiment, the other side) for each experiment under conf/experiment/ whose ``group`` is ``name``."""
    import yaml

    other = "teacher" if group == "model" else "model"
    found = []
    for path in sorted((Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")):
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        picks = {key.split("/")[-1]: value for d in defaults if isinstance(d, dict) for key, value in d.items()}
        if picks.get(group) == name and other in picks:
            found.append((path.stem, picks[other]))
    return found


def load_config(cfg: Any, cls: type = TrainConfig) -> Any:
    """Check a composed config (a DictConfig or a mapping) against ``cls`` and return the typed sections."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    data = {k: v for k, v in data.items() if k != "hydra"}
    return load(cls, data)
