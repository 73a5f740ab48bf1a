#!/usr/bin/env bash
# The GPU check (issue 28): one run, on one CUDA machine without network access, of everything that has not yet run
# on a GPU. Each step runs under its own timeout; its JSON (status, seconds, exit code, output tail, its own results)
# and its log go to $OUT (default benchmarks/results/gpu), then summary.json. A failing step never stops the rest.
#
#   make gpu-wheels                          # here, with network: the missing packages as wheels (benchmarks/gpu_wheels)
#   bash benchmarks/gpu_check.sh             # there: ≤ 9 minutes on one H100, installation included
#   bash benchmarks/gpu_check.sh --dry-run   # any CPU: every step at tiny sizes, nothing installed (tests/test_gpu_check.py)
set -u
cd "$(dirname "$0")/.."
DRY_RUN=$([[ "${1:-}" == "--dry-run" ]] && echo 1 || echo 0)
OUT=$(realpath -m "${OUT:-benchmarks/results/gpu}")
WHEELS=${GPU_WHEELS:-benchmarks/gpu_wheels}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d -t gpu_check.XXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON WORK DRY_RUN WHEELS

STEPS=()
step() {  # step NAME TIMEOUT_S COMMAND...: COMMAND under its own timeout, in its work folder $WORK/NAME
  local name=$1 limit=$(($2 * (DRY_RUN ? 3 : 1))) start  # a shared CPU is slower, and JIT-builds DeepSpeed's shm op once
  shift 2
  STEPS+=("$name")
  mkdir -p "$WORK/$name"
  start=$(date +%s.%N)
  timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" "$WORK/$name" >"$OUT/$name.log" 2>&1
  "$PYTHON" benchmarks/gpu_check.py record "$OUT" "$name" $? "$start" "$limit" "$WORK/$name"
}

install_wheels() {  # the wheels of `make gpu-wheels`, without dependencies: the image's torch/transformers/accelerate stay
  [[ $DRY_RUN == 1 ]] && { echo "skipped: dry run (the development environment is used as it is)"; return 77; }
  ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: run 'make gpu-wheels' where pip reaches PyPI"; return 1; }
  "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check "$WHEELS"/*.whl
}

bench() {  # bench SCRIPT GPU_ARGS DRY_ARGS WORKDIR: one benchmark, its JSON written to WORKDIR/result.json
  local arguments=$2
  [[ $DRY_RUN == 1 ]] && arguments=$3
  # shellcheck disable=SC2086  # the arguments are word lists
  "$PYTHON" "benchmarks/$1" $arguments --output "$4/result.json"
}

launch() {  # launch NAME CONFIG RECIPE ARGS...: one recipe on the embedded default, one process
  local name=$1 config=$2 recipe=$3 device=(--use_cpu false --bf16 true) environment=()
  shift 3
  if [[ $DRY_RUN == 1 ]]; then  # the CPU twins of the GPU configs (ACCELERATE_USE_CPU would drop DeepSpeed)
    device=(--use_cpu true --bf16 false)
    case $config in
      multi_gpu.yaml) environment=(ACCELERATE_USE_CPU=1) ;;
      *) config=${config%.yaml}_cpu.yaml ;;
    esac
  fi
  echo "== $recipe under $config"
  env "${environment[@]}" "$PYTHON" -m accelerate.commands.launch --config_file "accelerate_configs/$config" \
    --num_processes 1 --mixed_precision "$([[ $DRY_RUN == 1 ]] && echo no || echo bf16)" \
    --main_process_port $((29500 + RANDOM % 2000)) "recipes/$recipe.py" "${device[@]}" \
    --demo_dir "$WORK/demo" --demo_num_train 256 --demo_num_test 16 --feature_cache_dir "$WORK/$name/cache" \
    --logging_steps 1 --disable_tqdm true --save_strategy no "$@"
}

sft_then_polishppo() {  # sft_then_polishppo CONFIG WORKDIR: a few SFT steps, then PolishPPO iterations from them
  local config=$1 work=$2 name
  name=$(basename "$work")
  if [[ $config == deepspeed* ]] && ! "$PYTHON" -c "import deepspeed" 2>/dev/null; then
    echo "skipped: deepspeed cannot be imported ($("$PYTHON" -c 'import deepspeed' 2>&1 | tail -1))"
    return 77
  fi
  launch "$name" "$config" sft --config recipes/configs/demo_sft.yaml --output_dir "$work/sft" \
    --max_steps "$([[ $DRY_RUN == 1 ]] && echo 2 || echo 20)" &&
    launch "$name" "$config" polishppo --config recipes/configs/demo_polishppo.yaml --model_name_or_path "$work/sft" \
      --output_dir "$work/polishppo" --total_iterations "$([[ $DRY_RUN == 1 ]] && echo 1 || echo 3)" \
      --semantic_model "$WORK/prepare/embedder" --semantic_backend flagembedding --eval_strategy no
}

compile_off_and_on() {  # compile_off_and_on WORKDIR: the same SFT run without and with --torch_compile
  local backend=inductor steps=30
  [[ $DRY_RUN == 1 ]] && backend=eager steps=2  # inductor's C++ build takes ~40 s on a CPU; eager traces only
  launch compile multi_gpu.yaml sft --config recipes/configs/demo_sft.yaml --output_dir "$1/eager" --max_steps $steps &&
    launch compile multi_gpu.yaml sft --config recipes/configs/demo_sft.yaml --output_dir "$1/compiled" \
      --max_steps $steps --torch_compile true --torch_compile_backend $backend
}

prepare() {  # the offline sentence embedder for R_semantic, and the tiny φ pretrained once (cached) before the recipes
  "$PYTHON" benchmarks/gpu_check.py embedder "$1/embedder" $([[ $DRY_RUN == 1 ]] && echo --tiny) &&
    "$PYTHON" -c "from tippo_rl import build_tiny_tippo; build_tiny_tippo(seed=0)"
}

export -f install_wheels bench launch sft_then_polishppo compile_off_and_on prepare

# Timeouts: 540 s in all (+ 5 s each to kill a step that ignores SIGTERM), the 9 minutes of an H100 run; three times
# as long in a dry run, which takes about 3.5 min on 2 shared CPU cores.
step install 30 install_wheels
step environment 20 "$PYTHON" benchmarks/gpu_check.py environment
step prepare 60 prepare
step bench_sft 80 bench bench_sft.py "--size base --batch_size 8 --bf16 true" \
  "--size tiny --batch_size 4 --steps 1 --rounds 1 --num_train 8 --threads 1"
step bench_polishppo 100 bench bench_polishppo.py "--size base --semantic_model $WORK/prepare/embedder" \
  "--batch_size 2 --steps_per_generation 2 --num_ppo_epochs 1 --max_new_tokens 4 --sft_steps 0 --iterations 1
   --warmup_iterations 0 --rounds 1 --num_train 8 --threads 1 --semantic_backend flagembedding
   --semantic_model $WORK/prepare/embedder --variants polishppo/fixed grpo/fixed"
step recipes_ddp 60 sft_then_polishppo multi_gpu.yaml
step recipes_zero2 55 sft_then_polishppo deepspeed_zero2.yaml
step recipes_zero3 65 sft_then_polishppo deepspeed_zero3.yaml
step torch_compile 70 compile_off_and_on
"$PYTHON" benchmarks/gpu_check.py summary "$OUT" "${STEPS[@]}"
