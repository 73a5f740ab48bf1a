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

.PHONY: setup demo demo-sft demo-polishppo demo-ppo demo-eval test lint format benchmarks gpu-wheels gpu-check clean

$(STAMP): setup.cfg constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# torch first, pinned: a CPU build where one is available locally, else PyPI's default build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default: SFT → PolishPPO → evaluation (a before/after table). recipes/demo.py runs the
## three stages below in one process (the same results, one start-up), and builds the PolishPPO stage's semantic
## reward on the second core while SFT trains.
demo: setup
	$(PYTHON) recipes/demo.py

demo-sft: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/sft.py --config recipes/configs/demo_sft.yaml

demo-polishppo: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/polishppo.py --config recipes/configs/demo_polishppo.yaml

## PPO with any rewards (recipes/ppo.py) from the SFT demo; not part of `make demo`.
demo-ppo: setup
	$(LAUNCH) --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 1 recipes/ppo.py --config recipes/configs/demo_ppo.yaml

demo-eval: setup
	$(PYTHON) recipes/evaluate.py --config recipes/configs/demo_evaluate.yaml

## The whole test suite (what CI runs): slow and multi-process tests included, on two workers (pytest-xdist; the
## suite's tests are single-threaded, so two workers use both cores of a 2-core machine).
test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 --dist load --maxschedchunk 2 tests

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

## The GPU check (issue 28, benchmarks/gpu_check.sh). The GPU machine has Python 3.12, CUDA torch, transformers,
## accelerate and peft but no network: `gpu-wheels` downloads here what else the check imports (Python 3.12, x86-64,
## no dependencies: the image's packages stay), ~11 MB; deepspeed has no wheel on PyPI, so pip builds its pure-Python
## one from the sdist (DS_BUILD_OPS=0: its ops are JIT-built where they are used).
GPU_WHEELS_DIR ?= benchmarks/gpu_wheels
GPU_WHEELS := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 Levenshtein==0.27.5 rapidfuzz==3.14.6 \
	FlagEmbedding==1.4.2 model2vec==0.10.0 skeletoken==0.6.1 hjson==3.1.0 pydantic==2.11.7 pydantic-core==2.33.2 \
	annotated-types==0.7.0 typing-inspection==0.4.1
gpu-wheels: setup
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	DS_BUILD_OPS=0 $(PYTHON) -m pip wheel --quiet --no-deps --no-build-isolation -w $(GPU_WHEELS_DIR) deepspeed==0.19.8
	du -sh $(GPU_WHEELS_DIR)

gpu-check:
	bash benchmarks/gpu_check.sh

## Every speed benchmark in quick mode and the demo's time: benchmarks/results/summary.json (about 8 min on 2 cores).
bench: setup
	cd benchmarks && ../$(PYTHON) summary.py

clean:
	rm -rf outputs
