# tippo_rl — `make demo` and `make test` on a fresh machine (Python 3.10+, no GPU needed).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# accelerate launch that keeps a recipe's one-line errors and exit status 2, and stops its workers with it
LAUNCH := $(VENV)/bin/tippo-launch
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The tiny demo model gains nothing from a second intra-op thread, and loses up to 25× when the cores are shared.
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo demo-sft demo-polishppo demo-ppo demo-eval test lint format benchmarks clean

$(STAMP): setup.cfg constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# torch first, pinned: a CPU build where one is available locally, else PyPI's default build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default: SFT → PolishPPO → evaluation (a before/after table).
demo: demo-sft demo-polishppo demo-eval

demo-sft: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/sft.py --config recipes/configs/demo_sft.yaml

demo-polishppo: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/polishppo.py --config recipes/configs/demo_polishppo.yaml

## PPO with any rewards (recipes/ppo.py) from the SFT demo; not part of `make demo`.
demo-ppo: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/ppo.py --config recipes/configs/demo_ppo.yaml

demo-eval: setup
	$(PYTHON) recipes/evaluate.py --config recipes/configs/demo_evaluate.yaml

## The whole test suite (what CI runs): slow and multi-process tests included.
test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

## ruff, configured in pyproject.toml: lint and format checks (CI runs this); `make format` applies both.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

benchmarks: setup
	$(PYTHON) benchmarks/bench_rewards.py
	$(PYTHON) benchmarks/bench_sft.py
	$(PYTHON) benchmarks/bench_polishppo.py

clean:
	rm -rf outputs
