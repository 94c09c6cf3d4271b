"""``dear-plan``: each phase's peak device memory from the composed config and the models' shapes, no weights.

    dear-plan experiment=qwen-1.5b-14b --gpu-mem 80          # exit 0: every phase fits; 1: one does not

The state, held through the whole run (dear/train.py, dear/training/module.py, dear/models/precision.py),
``N`` parameters:

- the student's weights in float32 whatever its preset says, ``4·N_s``, their gradients ``4·N_s`` and AdamW's
  two moments ``8·N_s``. Gradients live from a step's first backward until right after its optimizer step
  (`DistillModule.training_step` frees them there): they are not alive in the rollout, scoring or evaluation;
- the frozen teacher in its preset's dtype, ``2·N_t`` in bfloat16;
- under ``bf16-mixed`` (what ``trainer.precision=auto`` is on a GPU) the student computes under
  ``torch.autocast(bf16)``, whose cache keeps a bf16 copy of every matrix it has cast until the autocast
  region ends (a training step, an evaluation): ``2·N_lin`` (attention, MLP and LM head matrices).

Each phase adds, at its widest moment (``B`` rows, ``P`` prompt and ``T`` new tokens, ``L = P + T``, per-token
formulas below, each measured on the CPU by ``bench/plan_check.py``):

- **optimizer step**: foreach AdamW's ``sqrt(v)``, ``4·N_s`` (mixed precision; a ``32-true`` run's fused AdamW
  allocates nothing beyond its moments, so there the plan is ``4·N_s`` high).
- **rollout** (`dear.distill.rollout.generate`, static cache on a GPU): the KV cache ``layers·B·L·kv·(k + v)``,
  ``kv = kv_heads·head_dim``; under autocast with float32 weights the keys are float32 (RoPE multiplies by a
  float32 cosine) and the values bf16, ``k + v = 6`` bytes. With it, the prefill's one-layer temporaries at
  ``B·P`` tokens (`forward_temporaries`) or the last decoding step's ``[B, V]`` buffers (`decode_step_bytes`).
- **training step** (`dear.distill.step.distill_step`, ``b`` rollouts per micro-batch, chunked logits): the widest of
  the token signals (activations kept for backward, `layer_activation_bytes` per layer and token, or each
  layer's float32 input under ``step.gradient_checkpointing``; the chunk workspace `workspace_bytes`; the
  LM head's bf16 cast), the loss's backward (plus the hidden states' and the head's gradients), a layer's
  backward, and the end of backward, where, from the second micro-batch on, every matrix's bf16 gradient
  is still held (`_Plan.held_weight_grads`).
- **held-out KL / selection scoring** (`dear.distill.step.score_step`, no gradient): the widest of the student's
  forward, the teacher's and the chunked signals, per micro-batch.
- **evaluation**: `generate` over ``eval.batch_size × benchmark.samples`` rows (dynamic cache, greedy).

Not modelled: the CUDA context and the caching allocator's reserve and fragmentation (a GPU of ``--gpu-mem``
GiB is taken to hold ``--gpu-mem - 1`` GiB of tensors, `CONTEXT_GIB`), the memory pool of a compiled
decoding step's CUDA graphs (``rollout.compile``: about one decoding step's temporaries), kernels' own
workspaces (cuBLAS, attention) and what an attention kernel keeps besides its inputs, output and
log-sum-exp. Every response is taken to run to its ``max_new_tokens`` after a prompt of ``--prompt-tokens``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from dear.config import methods
from dear.config.presets import benchmarks
from dear.errors import DearError
from dear.preflight.settings import cached_config

GIB = 2**30
CHUNK_ELEMENTS = 2**24  # dear.objective.chunked.CHUNK_ELEMENTS (which imports torch; a test holds the two equal)
CONTEXT_GIB = 1.0  # what a GPU loses to the CUDA context and allocator slack before any tensor
TIGHT = 0.9  # a phase above this share of the usable memory is marked tight (fragmentation is not modelled)
SHAPES_FILE = Path(__file__).parent / "model_shapes.json"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"  # dear.models.packaged.SMOLLM2_DIRNAME (a test holds them equal)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PICTURE_PROMPTS = 4  # dear.training.pages.PICTURE_PROMPTS: the selection pages' prompts (a test holds them equal)
PROG = "dear-plan"


class PlanError(DearError):
    """Shapes that cannot be found without downloading."""


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The config.json fields a plan reads (Qwen2, Qwen3 and Llama decoders)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    attention_bias: bool  # q, k, v projections with a bias (Qwen2)
    qk_norm: bool  # RMSNorm on queries and keys per head (Qwen3)
    source: str = ""  # where the numbers came from

    @classmethod
    def from_config(cls, name: str, cfg: dict, source: str) -> Shape:
        """From a config.json mapping; ``head_dim`` defaults to ``hidden / heads``, kv heads to heads."""
        cfg = cfg.get("text_config", cfg)
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            kind = cfg.get("model_type", "")
            return cls(
                name=name,
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                max_position_embeddings=int(cfg.get("max_position_embeddings") or 0),
                attention_bias=bool(cfg.get("attention_bias", kind == "qwen2")),
                qk_norm=kind.startswith("qwen3"),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{name}: {source} lacks the field {e} a plan needs") from None

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_linear_params(self) -> int:
        """``H·q + 2·H·kv + q·H + 3·H·I``: the matrices of one layer (what autocast casts)."""
        h, i = self.hidden_size, self.intermediate_size
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 3 * h * i

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def linear_params(self) -> int:
        """Every matrix a forward multiplies by: the layers' and the LM head (tied or not)."""
        return self.num_hidden_layers * self.layer_linear_params + self.head_params

    @property
    def params(self) -> int:
        """``V·H`` (embedding) ``+ V·H`` (head, untied) ``+ layers·(matrices + biases + norms) + H``."""
        h = self.hidden_size
        per_layer = self.layer_linear_params + 2 * h
        per_layer += (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.head_params + self.num_hidden_layers * per_layer + h


def shape_table() -> dict[str, dict]:
    """dear/model_shapes.json: public config.json fields keyed by hub id."""
    return {k: v for k, v in json.loads(SHAPES_FILE.read_text()).items() if not k.startswith("_")}


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PlanError(f"cannot read {path}: {e}") from None


def _from_table(name: str, hub_id: str, group: str) -> Shape:
    table = shape_table()
    if hub_id not in table:
        raise PlanError(
            f"no shapes for {group}={name} ({hub_id}): its config.json is not in the hub cache and not in "
            f"dear/model_shapes.json; pass {group}.path=/a/folder/with/config.json"
        )
    return Shape.from_config(name, table[hub_id], "dear/model_shapes.json")


def find_shape(preset, cache_dir: str | Path, group: str = "model") -> Shape:
    """A preset's shapes without its weights: ``path``'s config.json; a toy recipe; the converted SmolLM2 in
    ``cache_dir``; the hub cache's config.json; else dear/model_shapes.json. ``group``: model or teacher."""
    if preset.path:
        path = Path(preset.path).expanduser() / "config.json"
        return Shape.from_config(preset.name, _read_config(path), str(path))
    if preset.source == "toy":
        from dear.data.toy import CHARS

        t = preset.toy  # dear.models.toy.qwen2_config: tied head, kv heads = heads, 256 positions
        cfg = dict(
            model_type="qwen2",
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            num_key_value_heads=t.num_heads,
            vocab_size=2 + len(CHARS),  # the toy tokenizer: pad, end of text and the task's characters
            tie_word_embeddings=True,
            max_position_embeddings=256,
        )
        return Shape.from_config(preset.name, cfg, "the toy recipe")
    if preset.source in ("smollm2", "smollm2-tuned"):  # the tuned teacher keeps SmolLM2's architecture
        local = Path(str(cache_dir)).expanduser() / SMOLLM2_DIRNAME / "config.json"
        if local.is_file():
            return Shape.from_config(preset.name, _read_config(local), str(local))
        return _from_table(preset.name, SMOLLM2_HUB_ID, group)
    cached = cached_config(preset.hub_id, preset.revision)
    if cached is not None:
        return Shape.from_config(preset.name, _read_config(cached), "the hub cache")
    return _from_table(preset.name, preset.hub_id, group)


# ---------------------------------------------------------------------------------------------
# Per-token activation formulas
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Byte sizes a run computes with: weights, linear outputs, and whether autocast casts (and caches)."""

    name: str
    weight: int  # the trained student's weights, gradients and moments
    compute: int  # matmul outputs (bf16 under autocast)
    autocast: bool

    @classmethod
    def of(cls, setting: str, gpu: bool = True) -> Precision:
        """Lightning's names; ``auto`` is bf16-mixed on a GPU and 32-true on the CPU (dear/models/precision.py)."""
        name = ("bf16-mixed" if gpu else "32-true") if setting == "auto" else setting
        if name in ("bf16-mixed", "16-mixed"):
            return cls(name, 4, 2, True)
        if name in ("bf16-true", "16-true"):
            return cls(name, 2, 2, False)
        if name == "64-true":
            return cls(name, 8, 8, False)
        return cls(name, 4, 4, False)  # 32-true, 32


def layer_activation_bytes(s: Shape, kv_len: int, p: Precision) -> int:
    """Bytes per token one decoder layer keeps for backward (measured per tensor in bench/plan_check.py).

    ``r`` weight bytes (the residual stream's), ``c`` compute bytes, norms compute in float32:

    - two RMSNorms: input and normalised ``2·(r + 4)·H``; rsqrt ``8``;
    - linear inputs: under autocast each projection casts its own copy, ``5·c·H`` (q, k, v, gate, up);
      otherwise one normalised tensor per norm, ``2·r·H``;
    - attention (SDPA with a padding mask: k and v repeated to every head): q, k, v, output ``4·c·q``,
      log-sum-exp ``4·heads`` and the additive mask ``c·kv_len``;
    - Qwen3's q/k norms: float32 input and cast ``(4 + c)·(q + kv)``, rsqrt ``4·(heads + kv_heads)``;
    - SwiGLU MLP: gate, up, act and product ``4·c·I``.
    """
    h, r, c = s.hidden_size, p.weight, p.compute
    total = 2 * (r + 4) * h + 8
    total += 5 * c * h if p.autocast else 2 * r * h
    total += 4 * c * s.q_dim + 4 * s.num_attention_heads + c * kv_len
    if s.qk_norm:
        total += (4 + c) * (s.q_dim + s.kv_dim) + 4 * (s.num_attention_heads + s.num_key_value_heads)
    return total + 4 * c * s.intermediate_size


def final_norm_bytes(s: Shape, p: Precision) -> int:
    """Per token after the last layer: the final norm's input and normalised state, and its output ``(2r + 4)·H``."""
    return (2 * p.weight + 4) * s.hidden_size


def forward_temporaries(s: Shape, kv_len: int, weight: int, compute: int) -> int:
    """Bytes per token a no-grad forward holds at its widest, inside one layer (measured in bench/plan_check.py).

    ``weight`` is the model's weight bytes (its residual stream's), ``compute`` its matmul outputs'. The model's
    embedding output stays referenced for the whole forward. The wider of:

    - the MLP: embedding output, residual, post-attention residual and normalised state ``4·weight·H``,
      then act, up and their product ``3·compute·I``;
    - the attention: embedding output, residual, normalised state ``3·weight·H``, the q, k, v projections
      ``compute·(q + 2·kv)`` and RoPE's products on q, about ``11·q`` in float32 (scaled by the bytes RoPE
      computes in: float32 under autocast with float32 weights, the model's dtype otherwise);

    plus the attention mask's float copy ``4·kv_len``.
    """
    h = s.hidden_size
    mlp = 4 * weight * h + 3 * compute * s.intermediate_size
    rope = 11 * s.q_dim * max(weight, compute) // 4
    attn = 3 * weight * h + compute * (s.q_dim + 2 * s.kv_dim) + rope
    return max(mlp, attn) + 4 * kv_len


def decode_step_bytes(rows: int, vocab: int, greedy: bool, temperature: float) -> int:
    """A decoding step's ``[rows, V]`` buffers: the bf16 logits and their float32 copy, then the processed
    scores (greedy) or, sampling, the scaled scores (temperature ≠ 1), probabilities and multinomial's buffer."""
    per_row = 2 + 4 + (4 if greedy else 4 + 4 + (4 if temperature != 1.0 else 0))
    return rows * vocab * per_row


def chunk_rows(vocab: int, positions: int) -> int:
    """Positions per chunk of `dear.objective`: ``min(2**24 // V, positions)``."""
    return max(1, min(CHUNK_ELEMENTS // vocab, positions))


def workspace_bytes(vocab: int, positions: int) -> int:
    """`dear.objective.chunked.Workspace`: five float32 and one bool ``[rows, V]`` buffers, ``21·rows·V``."""
    return 21 * chunk_rows(vocab, positions) * vocab


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    state: bool = False  # weights, gradients, AdamW moments, teacher: held whatever the phase


@dataclass(frozen=True)
class Phase:
    """A phase at its widest moment: the terms alive then, their sum, and the knob that brings it down."""

    key: str  # optimizer | rollout | step | scoring | evaluation
    name: str
    terms: tuple[Term, ...]
    moment: str
    knob: str = ""
    counted: bool = True  # False: the other checkpointing setting, shown for comparison

    @property
    def peak(self) -> int:
        return sum(t.bytes for t in self.terms)

    @property
    def state(self) -> int:
        return sum(t.bytes for t in self.terms if t.state)

    def main_terms(self, n: int = 3) -> list[Term]:
        """The largest terms beyond the state."""
        return sorted((t for t in self.terms if not t.state), key=lambda t: -t.bytes)[:n]


@dataclass(frozen=True)
class Workload:
    """What a plan reads of a run, as plain numbers (`workload` makes it from the checked settings)."""

    batch_size: int  # prompts per step
    rollout_n: int  # samples per prompt
    prompt_tokens: int
    new_tokens: int  # rollout.max_new_tokens
    micro_batch: int  # rollouts per forward/backward (step.micro_batch_size, or all of them)
    checkpointing: bool
    logits: str  # chunked | full
    hidden_states: bool  # the selector reads hidden states (dear)
    selected_share: float  # share of response positions with a nonzero weight (the loss's chunks)
    sampler: str  # student | teacher | reference: who writes the training responses (method.source)
    rollout_cache: str  # static | dynamic
    temperature: float
    eval_batch: int  # eval.batch_size (prompts per generate call)
    eval_samples: int  # benchmark.samples (of the heaviest benchmark evaluated)
    eval_new_tokens: int
    eval_greedy: bool
    kl_prompts: int  # eval.kl_prompts (0: no held-out KL)
    precision: Precision
    shards: int = 1  # trainer=fsdp: the student's weights, gradients and moments split over this many devices
    prompts_per_call: int | None = None  # rollout.prompts_per_call: prompts sampled together; None: all of a step's

    @property
    def rollout_rows(self) -> int:
        return self.batch_size * self.rollout_n

    @property
    def generated_rows(self) -> int:
        """The rollouts one generate call samples (its KV cache's rows)."""
        return min(self.prompts_per_call or self.batch_size, self.batch_size) * self.rollout_n

    @property
    def micro_batches(self) -> int:
        return math.ceil(self.rollout_rows / self.micro_batch)


def workload(s, prompt_tokens: int, gpu: bool = True) -> Workload:
    """A run's `Workload` from its checked settings (`TrainConfig`), on a GPU unless ``gpu=False``."""
    rows, method = s.batch_size * s.rollout.n, s.method
    # evaluation's largest generate call: the benchmark (`benchmark` or one of eval.benchmarks) with the most tokens
    heaviest = max(benchmarks(s), key=lambda b: b.samples * b.max_new_tokens)
    selector = methods.get(method.selector)
    devices = s.trainer.devices if isinstance(s.trainer.devices, int) else 1
    return Workload(
        batch_size=s.batch_size,
        rollout_n=s.rollout.n,
        prompt_tokens=prompt_tokens,
        new_tokens=s.rollout.max_new_tokens,
        micro_batch=min(s.step.micro_batch_size or rows, rows),
        checkpointing=s.step.gradient_checkpointing,
        logits=s.step.logits,
        hidden_states=selector.needs_hidden,
        selected_share=selector.loss_share(method.knobs),  # the share of response positions the loss computes
        sampler=method.source,
        rollout_cache=s.rollout.cache if s.rollout.cache != "auto" else ("static" if gpu else "dynamic"),
        prompts_per_call=s.rollout.prompts_per_call,
        temperature=s.rollout.temperature,
        eval_batch=s.eval.batch_size,
        eval_samples=heaviest.samples,
        eval_new_tokens=heaviest.max_new_tokens,
        eval_greedy=heaviest.temperature == 0,
        kl_prompts=s.eval.kl_prompts,
        precision=Precision.of(s.trainer.precision, gpu),
        shards=devices * s.trainer.num_nodes if s.trainer.strategy == "fsdp" else 1,
    )


def _sum(terms: list[Term]) -> int:
    return sum(t.bytes for t in terms)


def _widest(moments: dict[str, list[Term]]) -> tuple[str, tuple[Term, ...]]:
    moment = max(moments, key=lambda m: _sum(moments[m]))
    return moment, tuple(moments[moment])


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


@dataclass(frozen=True)
class _Plan:
    student: Shape
    teacher: Shape
    w: Workload
    teacher_bytes: int  # the teacher preset's dtype: 2 for bfloat16

    @property
    def vocab(self) -> int:
        """V*: taken as the smaller config vocab_size (len(tokenizer) is at most that)."""
        return min(self.student.vocab_size, self.teacher.vocab_size)

    # --- the state and autocast's copies ----------------------------------------------------------
    def state(self, grads: bool = True) -> list[Term]:
        n, b, k = self.student.params, self.w.precision.weight, self.w.shards
        terms = [
            Term(f"student weights ({_count(n)} x {b} B)", n * b // k, True),
            Term("gradients", n * b // k, True),
            Term("AdamW moments", 2 * n * b // k, True),
            Term(
                f"teacher weights ({_count(self.teacher.params)} x {self.teacher_bytes} B)",
                self.teacher_weight_bytes,
                True,
            ),
        ]
        return terms if grads else terms[:1] + terms[2:]

    @property
    def teacher_weight_bytes(self) -> int:
        return self.teacher.params * self.teacher_bytes

    def autocast_cache(self, with_head: bool) -> list[Term]:
        """autocast's bf16 copies of the student's matrices in the current region: every layer's, and the LM
        head's once a full forward (generation, ``step.logits=full``) has called it."""
        if not self.w.precision.autocast:
            return []
        s = self.student
        n = s.num_hidden_layers * s.layer_linear_params + (s.head_params if with_head else 0)
        return [Term("autocast's bf16 weight copies", self.w.precision.compute * n)]

    # --- generation ---------------------------------------------------------------------------------
    def generation(self, model: str, rows: int, new: int, cache: str, greedy: bool, temperature: float) -> tuple:
        """`dear.distill.rollout.generate` as the first thing in an autocast region: the wider of the prefill (every
        layer's KV written, every layer's bf16 copy made, one layer's temporaries at ``rows·P`` tokens) and the
        last decoding step (the whole cache, the head's copy too, the ``[rows, V]`` buffers)."""
        shape = self.student if model == "student" else self.teacher
        p = self.w.precision
        if model == "student":
            weight, compute = p.weight, p.compute
            k, v = (weight, compute) if p.autocast else (weight, weight)
        else:
            weight = compute = k = v = self.teacher_bytes
        prompt, length = self.w.prompt_tokens, self.w.prompt_tokens + new
        kv_per_token = shape.num_hidden_layers * rows * shape.kv_dim * (k + v)
        cached = (lambda head: self.autocast_cache(head)) if model == "student" else (lambda head: [])
        kv_len = length if cache == "static" else prompt  # a static cache is allocated whole at the prefill
        prefill = [
            Term(f"KV cache ({rows} x {kv_len} tokens, {cache})", kv_per_token * kv_len),
            Term(
                f"prefill temporaries ({rows} x {prompt} tokens)",
                rows * prompt * forward_temporaries(shape, kv_len, weight, compute),
            ),
        ]
        last = [Term(f"KV cache ({rows} x {length} tokens, {cache})", kv_per_token * length)]
        if cache == "dynamic":  # torch.cat writes one layer's grown copy before dropping the old one
            last.append(Term("one layer's cache copy", kv_per_token * length // shape.num_hidden_layers))
        last.append(
            Term(f"decoding step's [{rows}, V] buffers", decode_step_bytes(rows, shape.vocab_size, greedy, temperature))
        )
        base = self.state(grads=False)  # the module frees the gradients right after each optimizer step
        return _widest(
            {"the prefill": base + cached(False) + prefill, "the last decoding step": base + cached(True) + last}
        )

    def rollout(self) -> Phase:
        w = self.w
        name = f"rollout ({w.generated_rows} x {w.prompt_tokens}+{w.new_tokens})"
        knob = "rollout.prompts_per_call, batch_size, rollout.n or rollout.max_new_tokens"
        if w.sampler == "reference":  # teacher-forced reference texts: nothing is sampled
            return Phase("rollout", "rollout (reference texts)", tuple(self.state(grads=False)), "no sampling", knob)
        moment, terms = self.generation(
            w.sampler, w.generated_rows, w.new_tokens, w.rollout_cache, False, w.temperature
        )
        return Phase("rollout", name, terms, moment, knob)

    # --- the training step --------------------------------------------------------------------------
    def kept(self, checkpointing: bool, tokens: int, length: int) -> list[Term]:
        """What a micro-batch's forward keeps for its backward: the student's activations (each layer's input
        under checkpointing), the final norm's, and the teacher's final hidden states (or both logits)."""
        s, t, p = self.student, self.teacher, self.w.precision
        if checkpointing:
            terms = [Term("layer inputs (checkpointing)", s.num_hidden_layers * tokens * p.weight * s.hidden_size)]
        else:
            per = layer_activation_bytes(s, length, p)
            terms = [Term(f"activations ({per} B/token/layer)", s.num_hidden_layers * tokens * per)]
        terms.append(Term("final norm and hidden states", tokens * final_norm_bytes(s, p)))
        if self.w.logits == "full":  # the heads run on the response's positions only (logits_to_keep)
            rows = tokens // length * (self.w.new_tokens + 1)
            terms.append(Term("student logits [b, T+1, V]", rows * p.compute * s.vocab_size))
            terms.append(Term("teacher logits [b, T+1, V]", rows * self.teacher_bytes * t.vocab_size))
        else:
            terms.append(Term("teacher hidden states", tokens * self.teacher_bytes * t.hidden_size))
        return terms

    def chunks(self, positions: int) -> list[Term]:
        """A chunked pass over ``positions`` (`dear.objective`): the workspace, a chunk's bf16 rows of logits
        (one model's at a time, copied into it) and, with chunked logits, the chunk's gathered hidden states
        and, under autocast with float32 weights, the LM head's bf16 cast (``weight[:V]`` is a view, which
        autocast does not cache)."""
        v, p = self.vocab, self.w.precision
        rows = chunk_rows(v, positions)
        terms = [
            Term(f"chunk workspace ({rows} rows x V)", workspace_bytes(v, positions)),
            Term("a chunk's bf16 logit rows", 2 * rows * v),
        ]
        if self.w.logits == "chunked":  # the chunk's hidden states, gathered (and cast under autocast)
            h = self.student.hidden_size
            terms.append(Term("a chunk's hidden rows", rows * h * (p.weight + (p.compute if p.autocast else 0))))
            if p.autocast:
                terms.append(Term("LM head's bf16 cast", p.compute * v * h))
        return terms

    def held_weight_grads(self) -> int:
        """The bf16 weight gradients a micro-batch's backward holds to its end: from the second micro-batch on
        autocast's copies come from the first, so their backward nodes are older than every node of this graph,
        and the autograd engine, which runs the newest ready node first, leaves them all to the end."""
        s, p = self.student, self.w.precision
        if not p.autocast or self.w.micro_batches < 2:
            return 0
        matrices = s.num_hidden_layers * s.layer_linear_params + (s.head_params if self.w.logits == "full" else 0)
        return p.compute * matrices

    def tied_head_grad(self) -> list[Term]:
        """A tied head's gradient (chunked logits) waits for the embedding's to be summed with it."""
        s, p = self.student, self.w.precision
        if s.tie_word_embeddings and self.w.logits == "chunked":
            return [Term("tied head's gradient, held", p.weight * s.head_params)]
        return []

    def layer_backward(self, checkpointing: bool, tokens: int, length: int) -> list[Term]:
        """A layer's backward at its widest. At layer ``l`` of ``n`` the layers below keep their inputs
        (checkpointing) or activations and the layers above hold their bf16 weight gradients, so the wider
        end: the top layer (everything kept) or the bottom one (one layer kept, every other layer's and its
        own MLP's gradients held); plus the layer's gradients in flight and, under checkpointing, its
        recomputed activations."""
        s, p = self.student, self.w.precision
        n, h = s.num_hidden_layers, s.hidden_size
        per_layer = tokens * (p.weight * h if checkpointing else layer_activation_bytes(s, length, p))
        mlp_share = 3 * h * s.intermediate_size / s.layer_linear_params
        bottom = per_layer + int(self.held_weight_grads() * (n - 1 + mlp_share) / n)
        terms = [
            Term("kept layers, or held bf16 weight gradients", max(n * per_layer, bottom)),
            Term("a layer's gradients in flight", tokens * (2 * p.weight * h + 2 * p.compute * s.intermediate_size)),
        ]
        if checkpointing:
            terms.append(Term("the layer's recomputed activations", tokens * layer_activation_bytes(s, length, p)))
        return terms + self.tied_head_grad()

    def step(self, checkpointing: bool) -> Phase:
        """The widest moment of `distill_step`'s last micro-batch (the previous ones' gradients alive)."""
        w, s, p = self.w, self.student, self.w.precision
        b, length = w.micro_batch, w.prompt_tokens + w.new_tokens
        tokens, h, v = b * length, s.hidden_size, self.vocab
        base = self.state() + self.autocast_cache(with_head=w.sampler == "student" or w.logits == "full")
        kept = self.kept(checkpointing, tokens, length)
        selected = max(1, math.ceil(b * w.new_tokens * w.selected_share))
        if w.logits == "full":
            grads = [Term("logits' gradient [b, T+1, V]", b * (w.new_tokens + 1) * p.compute * s.vocab_size)]
        else:
            grads = [
                Term("hidden states' gradient", tokens * p.weight * h),
                Term("LM head's gradient", p.weight * v * h),
            ]
        held = self.held_weight_grads()
        end = [Term("embedding's gradient [V, H]", p.weight * s.head_params)] + self.tied_head_grad()
        end += [Term("bf16 weight gradients held to the end", held)] if held else []
        moment, terms = _widest(
            {
                "the token signals": base + kept + self.chunks(b * w.new_tokens),
                "the loss's backward": base + kept + self.chunks(selected) + grads,
                "a layer's backward": base + self.layer_backward(checkpointing, tokens, length),
                "the end of backward": base + end,
            }
        )
        label = "on" if checkpointing else "off"
        knob = "step.micro_batch_size" + ("" if checkpointing else " or step.gradient_checkpointing=true")
        return Phase(
            "step",
            f"training step (b={b}, checkpointing {label})",
            terms,
            moment,
            knob,
            checkpointing == w.checkpointing,
        )

    def optimizer(self) -> Phase:
        n, p, k = self.student.params, self.w.precision, self.w.shards
        terms = self.state() + [Term("AdamW's sqrt(v) (foreach)", n * p.weight // k)]
        return Phase("optimizer", "weights + optimizer step", tuple(terms), "optimizer.step")

    # --- evaluation ---------------------------------------------------------------------------------
    def scored(self, rows: int, new: int, selection: bool) -> dict[str, list[Term]]:
        """`score_step` over ``rows`` rollouts of ``new`` tokens in micro-batches, without gradient: the
        student's forward, the teacher's (the student's final hidden states held; with dear's selection every
        layer's, which ``output_hidden_states`` returns) and the chunked signals."""
        w, s, t, p = self.w, self.student, self.teacher, self.w.precision
        b = min(w.micro_batch, rows)
        length = w.prompt_tokens + new
        tokens = b * length
        final = [Term("student final hidden states", tokens * p.weight * s.hidden_size)]
        layers = [Term("student hidden states of every layer", s.num_hidden_layers * tokens * p.weight * s.hidden_size)]
        layers = layers if selection else []
        student = forward_temporaries(s, length, p.weight, p.compute)
        teacher = forward_temporaries(t, length, self.teacher_bytes, self.teacher_bytes)
        signals = final + [Term("teacher final hidden states", tokens * self.teacher_bytes * t.hidden_size)]
        signals += self.chunks(b * new)
        if selection:
            signals.append(Term("selection: unit hidden states and their bf16 cast", tokens * (8 + 2) * s.hidden_size))
        return {
            "the student's forward": layers + [Term(f"student layer temporaries (b={b} x {length})", tokens * student)],
            "the teacher's forward": final
            + layers
            + [Term(f"teacher layer temporaries (b={b} x {length})", tokens * teacher)],
            "the signals": signals,
        }

    def scoring(self) -> Phase:
        """Held-out KL (``kl_prompts`` in batches of ``eval.batch_size``, one sample each) and the selection
        pages (4 prompts, the method's selection), as `score_step` scores them."""
        w = self.w
        moments = self.scored(PICTURE_PROMPTS, w.new_tokens, w.hidden_states)
        if w.kl_prompts:
            moments.update(
                {
                    f"{m} (KL)": t
                    for m, t in self.scored(min(w.eval_batch, w.kl_prompts), w.eval_new_tokens, False).items()
                }
            )
        base = self.state(grads=False) + self.autocast_cache(with_head=True)  # gradients freed after each step
        moment, terms = _widest({m: base + t for m, t in moments.items()})
        return Phase("scoring", "held-out KL / selection scoring", terms, moment, "step.micro_batch_size")

    def evaluation(self) -> Phase:
        w = self.w
        rows = w.eval_batch * w.eval_samples
        moment, terms = self.generation("student", rows, w.eval_new_tokens, "dynamic", w.eval_greedy, 1.0)
        name = f"evaluation ({rows} x {w.prompt_tokens}+{w.eval_new_tokens})"
        return Phase("evaluation", name, terms, moment, "eval.batch_size or benchmark.max_new_tokens")

    def phases(self) -> list[Phase]:
        return [
            self.optimizer(),
            self.rollout(),
            self.step(self.w.checkpointing),
            self.step(not self.w.checkpointing),
            self.scoring(),
            self.evaluation(),
        ]


def plan_phases(student: Shape, teacher: Shape, w: Workload, teacher_bytes: int = 2) -> list[Phase]:
    """Every phase of a run: the optimizer step, the rollout, the training step (as set, then with the other
    checkpointing setting, not counted), held-out KL / selection scoring, evaluation."""
    return _Plan(student, teacher, w, teacher_bytes).phases()


# ---------------------------------------------------------------------------------------------
# Knobs: the largest setting that fits
# ---------------------------------------------------------------------------------------------


def _largest(fits, start: int) -> int | None:
    """The largest ``n`` in ``1 … start`` with ``fits(n)`` (``fits`` falls as ``n`` grows), or None."""
    if not fits(1):
        return None
    lo, hi = 1, start
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def advice(phase: Phase, student: Shape, teacher: Shape, w: Workload, teacher_bytes: int, limit: int) -> str:
    """One line: the knob that brings ``phase`` under ``limit`` bytes, with the largest value that fits."""

    def fits(**change) -> bool:
        plan = _Plan(student, teacher, dataclasses.replace(w, **change), teacher_bytes)
        return next(p for p in plan.phases() if p.key == phase.key and p.counted).peak <= limit

    state = _Plan(student, teacher, w, teacher_bytes).state()
    if _sum(state) > limit or phase.key == "optimizer":
        return (
            f"the weights, gradients, AdamW moments and teacher alone take {_sum(state) / GIB:.1f} GiB; use a GPU "
            f"with more memory, a smaller teacher, or shard the student over GPUs (trainer=fsdp step.logits=full)"
        )
    if phase.key == "rollout":
        n = _largest(lambda k: fits(prompts_per_call=k), min(w.prompts_per_call or w.batch_size, w.batch_size))
        if n:
            return (
                f"{phase.name}: rollout.prompts_per_call={n} fits (sampled {n} prompts at a time, still "
                f"{w.batch_size} x {w.rollout_n} rollouts a step)"
            )
        return (
            f"{phase.name}: not even one prompt's {w.rollout_n} rollouts fit; lower rollout.n or rollout.max_new_tokens"
        )
    if phase.key == "step":
        b = _largest(lambda m: fits(micro_batch=m), w.micro_batch)
        if b:
            return f"{phase.name}: step.micro_batch_size={b} fits (now {w.micro_batch})"
        if not w.checkpointing and fits(micro_batch=1, checkpointing=True):
            return f"{phase.name}: step.gradient_checkpointing=true (it fits at step.micro_batch_size=1)"
        return f"{phase.name}: not even one rollout per micro-batch fits; lower rollout.max_new_tokens"
    if phase.key == "scoring":
        b = _largest(lambda m: fits(micro_batch=m), w.micro_batch)
        if b:
            return f"{phase.name}: step.micro_batch_size={b} fits (now {w.micro_batch})"
        return f"{phase.name}: not even one rollout at a time fits; lower benchmark.max_new_tokens"
    n = _largest(lambda k: fits(eval_batch=k), w.eval_batch)
    if n:
        return f"{phase.name}: eval.batch_size={n} fits (now {w.eval_batch})"
    return f"{phase.name}: not even one prompt at a time fits; lower benchmark.max_new_tokens"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def compose_settings(overrides: list[str]):
    """The checked settings ``dear-train OVERRIDES`` would run with (a real student with no ``setup=`` gets
    ``setup=real-math``, as there), and the note that says so; a user's mistake exits with one line, status 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dear.preflight.command import check_group_overrides, compose, fail, not_a_key, with_setup
    from dear.preflight.settings import train_config

    check_group_overrides(PROG, overrides)
    overrides, note = with_setup(PROG, overrides)
    try:
        cfg = compose(overrides, "train")
    except (HydraException, OmegaConfBaseException) as e:
        try:
            fail(PROG, not_a_key(overrides, "train", str(e)))
        except DearError as one_line:
            fail(PROG, str(one_line))
    try:  # the settings alone: this machine need not be the one that trains
        return train_config(cfg, machine=False), note
    except DearError as e:
        fail(PROG, str(e))


def verdict(phase: Phase, usable: int) -> str:
    if phase.peak > usable:
        return "NO"
    return "tight" if phase.peak > TIGHT * usable else "yes"


def render(phases: list[Phase], usable: int) -> list[str]:
    """The table: phase, predicted GiB, fits, the state's GiB, the largest terms beyond it and the moment."""
    lines = [f"{'phase':<44} {'GiB':>6}  {'fits':<6} {'state':>5}  + largest terms (GiB)"]
    for p in phases:
        fits = verdict(p, usable) if p.counted else f"({verdict(p, usable)})"
        terms = ", ".join(f"{t.name} {t.bytes / GIB:.1f}" for t in p.main_terms())
        lines.append(f"{p.name:<44} {p.peak / GIB:>6.1f}  {fits:<6} {p.state / GIB:>5.1f}  + {terms} [at {p.moment}]")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict each phase's peak GPU memory of `dear-train OVERRIDES` from config.json shapes alone.",
    )
    parser.add_argument("--gpu-mem", type=float, default=80.0, metavar="GiB", help="the GPU's memory (default 80)")
    parser.add_argument("--prompt-tokens", type=int, default=256, metavar="N", help="assumed prompt length (256)")
    parser.add_argument("overrides", nargs="*", help="dear-train's overrides, e.g. experiment=qwen-1.5b-14b")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.gpu_mem <= CONTEXT_GIB or args.prompt_tokens < 1:
        parser.error(f"--gpu-mem must be more than {CONTEXT_GIB:g} GiB and --prompt-tokens at least 1")
    if any("," in o.split("=", 1)[-1] or o.startswith("-") for o in args.overrides):
        parser.error("a plan is for one run: give one value per key (no sweeps, no Hydra flags)")
    settings, note = compose_settings(args.overrides)
    if note:
        print(note, file=sys.stderr)
    try:
        student = find_shape(settings.model, settings.cache_dir)
        teacher = find_shape(settings.teacher, settings.cache_dir, "teacher")
    except DearError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    w = workload(settings, args.prompt_tokens)
    t_bytes = DTYPE_BYTES[settings.teacher.dtype]
    phases = plan_phases(student, teacher, w, t_bytes)
    usable = int((args.gpu_mem - CONTEXT_GIB) * GIB)
    print(
        f"{PROG}: student {student.name} ({_count(student.params)} parameters; shapes from {student.source}), "
        f"teacher {teacher.name} ({_count(teacher.params)}, {settings.teacher.dtype}; from {teacher.source}), "
        f"{w.precision.name}, one GPU of {args.gpu_mem:g} GiB ({CONTEXT_GIB:g} GiB left to the CUDA context)"
    )
    print(
        f"assumed: prompts of {w.prompt_tokens} tokens (--prompt-tokens); every response runs to "
        f"{w.new_tokens} tokens (rollout.max_new_tokens), {w.eval_new_tokens} in evaluation; vocabulary "
        f"{min(student.vocab_size, teacher.vocab_size)}"
    )
    print("\n".join(render(phases, usable)))
    failing = [p for p in phases if p.counted and p.peak > usable]
    if failing and failing[0].state > usable:  # no knob of a phase helps: one line says what does
        failing = failing[:1]
    for p in failing:
        print("to fit: " + advice(p, student, teacher, w, t_bytes, usable))
    return 1 if failing else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
