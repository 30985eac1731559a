# Sourced by setup_ollama.sh and build_llamacpp.sh, which define die().
# On Intel Xeons since Sapphire Rapids, -march turns AMX on, and ggml's CPU code then takes its AMX path: Ollama's
# cgo build fails to link it, llama.cpp's crashed in it (the reasons are beside each caller). Each AMX extension
# the compiler enables is turned off again by name (GCC and clang spell __AMX_INT8__ as -mamx-int8); AVX-512 and
# the rest stay. A CPU without AMX gets no extra flag, so build keys, and cached builds, stay what they were.

# amx_off_flags COMPILER MARCH VARIABLE: prints the -mno-amx-* flags for -march=MARCH (nothing without AMX);
# dies, naming VARIABLE (the setting that picks MARCH), when the compiler refuses MARCH or AMX stays on.
amx_off_flags() {
  local compiler=$1 arch=$2 var=$3 macros off
  command -v "$compiler" >/dev/null || die "$compiler not found; install a C/C++ compiler (Debian: apt-get install build-essential)"
  macros=$("$compiler" -march="$arch" -dM -E -x c /dev/null 2>&1) \
    || die "$compiler does not accept -march=$arch ($var): $(head -n 3 <<<"$macros")"
  off=$(sed -n 's/^#define __AMX_\([A-Z0-9_]*\)__ .*/-mno-amx-\L\1/p' <<<"$macros" | LC_ALL=C sort | tr '\n' ' ')
  off=${off% }
  # grep reads all of it (no -q): an early exit could fail the compiler with SIGPIPE and, under pipefail, the test.
  if "$compiler" -march="$arch" $off -dM -E -x c /dev/null 2>/dev/null | grep '^#define __AMX_' >/dev/null; then
    die "$compiler still enables AMX with -march=$arch $off; set $var=x86-64-v4 (AVX-512) or x86-64-v3 (AVX2)"
  fi
  echo "$off"
}
