#!/usr/bin/env bash
# The engine of this tree against a previous commit's, on one GPU, back to back in one call: issue 17's rule that
# every speed figure is a ratio taken inside one call, since two machines of one kind differ by up to 15%.
#
#   bash benchmarks/gpu_ab.sh BASE_TREE OUT_DIR [TESTS] [SERVE_LEVELS]
#
# BASE_TREE: a folder holding the previous commit's tree. Make it on the CPU host, where this checkout's git is
#            (a GPU host's copy of .git may be stale), and carry it:  git archive BASE | tar -x -C .gpu/base
# TESTS:     gpu_bench.py tests, default decode,profile,throughput,prefix,prefill; each runs with this tree's
#            benchmarks/gpu_bench.py against the base engine and then this tree's engine (PYTHONPATH picks it).
# SERVE_LEVELS: users for `bench run scenarios/gpu-7b.yaml --only engine-bf16`, default 1,64 (empty: no serving
#            run); each tree serves from its own folder, AB_ROUNDS times (default 2), the trees alternated.
#            ENGINE_ARGS_BASE and ENGINE_ARGS_NEW (default: ENGINE_ARGS) add engine serve options on each side where
#            its scenario reads ENGINE_ARGS (from 2e3f000 on): with one tree as both sides,
#            ENGINE_ARGS_BASE=--no-async-scheduling measures that option alone.
# OUT_DIR gets base.json, new.json (gpu_bench), serve-base/ and serve-new/ (a run folder per round), and ab.json:
# new over base for every figure both have, serving figures as each side's median with every round listed.
set -euo pipefail
base=$(cd "${1:?usage: $0 BASE_TREE OUT_DIR [TESTS] [SERVE_LEVELS]}" && pwd)
out=${2:?usage: $0 BASE_TREE OUT_DIR [TESTS] [SERVE_LEVELS]}
tests=${3:-decode,profile,throughput,prefix,prefill}
levels=${4-1,64}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -d "$base/engine" ] || { echo "[gpu_ab] $base holds no engine/: give the previous commit's tree" >&2; exit 2; }
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
vocab=${VOCAB_GGUF:-$here/models/ggml-vocab-qwen2.gguf}

for side in base new; do
  tree=$([ $side = base ] && echo "$base" || echo "$here")
  echo "[gpu_ab] gpu_bench $tests on the $side tree ($tree)" >&2
  PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" "$python" "$here/benchmarks/gpu_bench.py" --out "$out/$side.json" \
    --shapes "${AB_SHAPES:-qwen3-0.6b,qwen2.5-7b}" --tests "$tests" \
    --profile-cases "${AB_PROFILE_CASES:-qwen2.5-7b:1:128,qwen2.5-7b:64:1100}" >"$out/$side.log" 2>&1 \
    || { tail -n 30 "$out/$side.log" >&2; exit 1; }
done
if [ -n "$levels" ]; then
  n=$(tr ',' '\n' <<<"$levels" | awk '{printf "%s%d", NR > 1 ? "," : "", ($1 < 4 ? 4 : $1)}')
  # Rounds alternate the trees (base, new, base, new, ...): a drift of the card or host over the call then falls on
  # both sides; ab_ratios.py takes each side's median.
  for round in $(seq "${AB_ROUNDS:-2}"); do
    for side in base new; do
      tree=$([ $side = base ] && echo "$base" || echo "$here")
      echo "[gpu_ab] round $round: serving at $levels users from the $side tree" >&2
      args=$([ $side = base ] && echo "${ENGINE_ARGS_BASE-${ENGINE_ARGS:-}}" || echo "${ENGINE_ARGS_NEW-${ENGINE_ARGS:-}}")
      (cd "$tree" && ENGINE_ARGS=$args VOCAB_GGUF=$vocab "$python" -m harness.cli run scenarios/gpu-7b.yaml \
        --only engine-bf16 --set "load.concurrency=[$levels]" --set "load.requests=[$n]" --no-report \
        --out "$out/serve-$side" >"$out/serve-$side-$round.log" 2>&1) || { tail -n 30 "$out/serve-$side-$round.log" >&2; exit 1; }
    done
  done
fi
"$python" "$here/benchmarks/ab_ratios.py" "$out" | tee "$out/ab.json"
