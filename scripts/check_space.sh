#!/usr/bin/env bash
# Stops a set-up early, naming the folder and the sizes, when its disk cannot hold what comes next: pip's
# "OSError: [Errno 28] No space left on device" halfway through torch's CUDA libraries says neither.
# usage: check_space.sh PATH GIB WHAT   (PATH need not exist yet: its nearest existing parent is checked)
set -euo pipefail
target=$1 need_gib=$2 what=$3
probe=$target
while [ ! -e "$probe" ]; do probe=$(dirname "$probe"); done
free_kib=$(df -Pk "$probe" | awk 'NR == 2 {print $4}')
need_kib=$((need_gib * 1024 * 1024))
if [ "$free_kib" -lt "$need_kib" ]; then
  free_gib=$(awk -v k="$free_kib" 'BEGIN {printf "%.1f", k / 1048576}')
  mount=$(df -P "$probe" | awk 'NR == 2 {print $6}')
  echo "error: $what needs about $need_gib GiB free on the disk that holds $target ($mount); it has $free_gib GiB." >&2
  echo "Free some space there, or point the set-up elsewhere (make VENV=/other/disk/.venv; TMPDIR for pip's downloads; PAGEBENCH_CACHE for the Ollama and llama.cpp builds)." >&2
  exit 1
fi
