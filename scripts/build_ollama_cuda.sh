#!/usr/bin/env bash
# Ollama with its CUDA backend, for the GPU comparison: the pinned Ollama's ggml CUDA library built from the
# source in its Go module, laid out where the binary looks for it (<bin>/../lib/ollama/cuda_v<N>/), once.
#
#   scripts/build_ollama_cuda.sh [SOURCE]         prints the prefix holding bin/ollama and lib/ollama/
#   scripts/build_ollama_cuda.sh --pack FILE.tgz  writes SOURCE for a host without Go or network (CPU host)
#   scripts/build_ollama_cuda.sh --check PREFIX   starts that Ollama once and fails unless it finds a CUDA device
#
# SOURCE: Ollama's Go module folder (default: the one scripts/setup_ollama.sh downloaded) or a .tgz of its
# CMakeLists.txt, CMakePresets.json and ml/backend/ggml/ggml (--pack writes one: about 1.2 MB).
# The Go binary itself is CPU code and has no CUDA in it; the CUDA kernels load at run time from the library.
# Env: OLLAMA_BIN (the binary to put in bin/; default: build it with setup_ollama.sh, which needs Go),
#      CUDA_ARCH (default 90a: Hopper only, what the comparison runs on), OLLAMA_BUILD_JOBS (default: all cores),
#      OLLAMA_CUDA_PREFIX (default $PAGEBENCH_CACHE/ollama/<version>-cuda<arch>), PAGEBENCH_CACHE.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=${OLLAMA_VERSION:-$(tr -d '[:space:]' <"$here/ollama.version")}
cache=${PAGEBENCH_CACHE:-$HOME/.cache/pagebench}
module="$cache/go/pkg/mod/github.com/ollama/ollama@v$version"
say() { echo "[build_ollama_cuda] $*" >&2; }
die() { say "$*"; exit 1; }
# The parts of the module that CMake needs for ggml-base and ggml-cuda; the rest is Go.
PARTS=(CMakeLists.txt CMakePresets.json ml/backend/ggml/ggml)

if [ "${1:-}" = --pack ]; then
  out=${2:?usage: $0 --pack FILE.tgz}
  if [ ! -f "$module/CMakeLists.txt" ]; then
    command -v go >/dev/null || die "Go is needed to download Ollama $version's module (or run scripts/setup_ollama.sh)"
    GOMODCACHE="$cache/go/pkg/mod" GOFLAGS=-mod=mod go mod download "github.com/ollama/ollama@v$version" \
      || die "could not download github.com/ollama/ollama@v$version from the Go module proxy"
  fi
  tar -czf "$out" -C "$module" "${PARTS[@]}"
  say "$(du -h "$out" | cut -f1) written to $out (Ollama $version's CMake files and ggml)"
  exit 0
fi

check() {
  # Proof that the binary loads the CUDA library: Ollama logs one `inference compute` line per device it found.
  local prefix=$1 log port
  log=$(mktemp) port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  OLLAMA_HOST=127.0.0.1:$port OLLAMA_MODELS=$(mktemp -d) OLLAMA_NO_CLOUD=1 "$prefix/bin/ollama" serve >"$log" 2>&1 &
  local pid=$! found=""
  for _ in $(seq 1 150); do
    if grep -q 'inference compute' "$log"; then found=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.2
  done
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
  grep 'inference compute' "$log" >&2 || true
  if [ -z "$found" ] || ! grep 'inference compute' "$log" | grep -q 'library=CUDA'; then
    tail -n 25 "$log" >&2
    rm -f "$log"
    die "$prefix/bin/ollama found no CUDA device (its log above); is the driver there and the library built for this GPU?"
  fi
  rm -f "$log"
}

if [ "${1:-}" = --check ]; then
  check "${2:?usage: $0 --check PREFIX}"
  exit 0
fi

command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || export PATH=$PATH:/usr/local/cuda/bin
command -v nvcc >/dev/null || die "nvcc not found: Ollama's CUDA backend needs the CUDA toolkit"
for tool in cmake c++; do command -v "$tool" >/dev/null || die "$tool not found"; done
arch=${CUDA_ARCH:-90a}
cuda_version=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')
runner_dir=cuda_v${cuda_version%%.*}
prefix=${OLLAMA_CUDA_PREFIX:-$cache/ollama/$version-cuda$arch}

binary=${OLLAMA_BIN:-}
if [ -z "$binary" ]; then
  binary=$(bash "$here/setup_ollama.sh") || die "no Ollama binary: set OLLAMA_BIN, or install Go so that setup_ollama.sh can build one"
fi
[ -x "$binary" ] || die "OLLAMA_BIN=$binary is not an executable file"
info="ollama $version, binary sha256 $(sha256sum "$binary" | cut -c1-16), CUDA $cuda_version, sm_$arch, $runner_dir"
if [ -f "$prefix/lib/ollama/$runner_dir/libggml-cuda.so" ] && [ "$(head -n1 "$prefix/build-info.txt" 2>/dev/null)" = "$info" ]; then
  echo "$prefix"
  exit 0
fi

src=${1:-$module}
work="$prefix/work"
# An interrupted or failed build keeps its build folder: ninja then recompiles only what is missing.
rm -rf "$work/src" "$work/dist"
mkdir -p "$work/src"
if [ -f "$src" ]; then
  tar -xzf "$src" -C "$work/src"
elif [ -f "$src/CMakeLists.txt" ]; then
  for p in "${PARTS[@]}"; do mkdir -p "$work/src/$(dirname "$p")"; cp -r "$src/$p" "$work/src/$p"; done
else
  die "no Ollama source at $src: give the module folder or a .tgz from \`$0 --pack\`"
fi
[ -f "$work/src/ml/backend/ggml/ggml/src/ggml-cuda/CMakeLists.txt" ] || die "$src lacks ml/backend/ggml/ggml/src/ggml-cuda"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
say "configuring ggml-cuda for sm_$arch (CUDA $cuda_version, $runner_dir)"
start=$(date +%s)
cmake -S "$work/src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DOLLAMA_RUNNER_DIR="$runner_dir" -DCMAKE_INSTALL_PREFIX="$work/dist" \
  >"$work/configure.log" 2>&1 \
  || { tail -n 30 "$work/configure.log" >&2; die "cmake configure failed (log: $work/configure.log)"; }
say "building ggml-cuda (about 3 minutes on 16 cores)"
cmake --build "$work/build" --target ggml-cuda -j "${OLLAMA_BUILD_JOBS:-$(nproc)}" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; die "building ggml-cuda failed (log: $work/build.log)"; }
# Ollama's CMakeLists fixes the install folder at configure time (hence CMAKE_INSTALL_PREFIX above).
# The CUDA component also brings the cudart and cuBLAS libraries it was linked against, as Ollama's releases do.
rm -rf "$prefix/bin" "$prefix/lib"
mkdir -p "$prefix/bin" "$prefix/lib/ollama/$runner_dir"
if cmake --install "$work/build" --component CUDA >"$work/install.log" 2>&1; then
  cp -a "$work/dist/lib/ollama/$runner_dir/." "$prefix/lib/ollama/$runner_dir/"
else
  # Without its runtime libraries beside it, the library still loads where the toolkit's are on the loader path.
  say "cmake --install could not gather cudart/cuBLAS (log: $work/install.log); copying libggml-cuda.so alone"
  cp -a "$work"/build/lib/ollama/libggml-cuda.so* "$prefix/lib/ollama/$runner_dir/"
fi
cp "$binary" "$prefix/bin/ollama"
cp -a "$work"/build/lib/ollama/libggml-base.so* "$prefix/lib/ollama/"
[ -f "$prefix/lib/ollama/$runner_dir/libggml-cuda.so" ] || die "libggml-cuda.so missing after install"
printf '%s\nbuilt %s in %ss\n' "$info" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" >"$prefix/build-info.txt"
[ -n "${OLLAMA_KEEP_BUILD:-}" ] || rm -rf "$work"
say "$(tail -n1 "$prefix/build-info.txt"); $(du -sh "$prefix/lib/ollama" | cut -f1) of libraries"
echo "$prefix"
