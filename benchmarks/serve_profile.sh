#!/usr/bin/env bash
# Where `engine serve` spends its host time under load: `bench run` drives USERS users against the engine backend
# of SCENARIO while py-spy samples the server process twice at once, once by wall clock per thread (what each thread
# waits on) and once only while a thread holds the GIL (who keeps the engine loop from running).
#
#   bash benchmarks/serve_profile.sh OUT_DIR [SCENARIO] [USERS] [REQUESTS] [SECONDS] [BACKEND] [DELAY_S] [-- BENCH_ARGS...]
#
# Defaults: scenarios/gpu-7b.yaml, 64 users, 384 requests (six each), 20 s of sampling, backend engine-bf16 (the
# engine backend's name in SCENARIO), sampling starts DELAY_S=6 s after the harness reports the server ready (the
# warm-up request and the level's first prompts go by first). BENCH_ARGS go to `bench run` as they are, e.g.
# `-- --set workload.output_tokens=64 --no-report`. Needs py-spy (pip install py-spy; a static binary) and the
# permission to ptrace the server (root, or kernel.yama.ptrace_scope=0). OUT_DIR gets the run (run/<run-id>/), its
# log (bench.log), py-spy's collapsed stacks (wall.txt, gil.txt) and a per-thread summary of both (summary.txt, from
# benchmarks/pyspy_summary.py). PYTHON picks the interpreter (default python3). A relative SCENARIO is looked up
# from the current folder, then from the repository root.
# On a GPU host with the wheels of benchmarks/gpu_inputs.sh installed with `pip install --target SITE`:
#   PATH=SITE/bin:$PATH PYTHONPATH=SITE bash benchmarks/serve_profile.sh /tmp/profile-7b
set -euo pipefail
say() { echo "[serve_profile] $*" >&2; }
pos=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do pos+=("$1"); shift; done
[ $# -gt 0 ] && shift
extra=("$@")
out=${pos[0]:?usage: $0 OUT_DIR [SCENARIO] [USERS] [REQUESTS] [SECONDS] [BACKEND] [DELAY_S] [-- BENCH_ARGS...]}
scenario=${pos[1]:-scenarios/gpu-7b.yaml}; users=${pos[2]:-64}; requests=${pos[3]:-384}; seconds=${pos[4]:-20}
backend=${pos[5]:-engine-bf16}; delay=${pos[6]:-6}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ ! -f "$scenario" ] || scenario=$(cd "$(dirname "$scenario")" && pwd)/$(basename "$scenario")
cd "$(dirname "$0")/.."
log=$out/bench.log
command -v py-spy >/dev/null || { say "py-spy not found on PATH (pip install py-spy)"; exit 1; }

"$python" -m harness.cli run "$scenario" --only "$backend" --set "load.concurrency=[$users]" \
  --set "load.requests=[$requests]" --out "$out/run" "${extra[@]}" >"$log" 2>&1 &
bench=$!
trap 'kill "$bench" 2>/dev/null; exit 130' INT TERM  # bench stops its server on SIGTERM
fail() {
  say "$*"
  echo "--- last lines of $log:" >&2
  tail -n 30 "$log" >&2 || true
  kill "$bench" 2>/dev/null || true  # bench stops its server and keeps what it has
  wait "$bench" 2>/dev/null || true
  exit 1
}

# The harness prints `BACKEND ready: ready after 20.9s at http://127.0.0.1:43669` once the server answers, and
# `BACKEND failed: ...` when it does not get there (its own ready_timeout_s applies).
port=""
while :; do
  port=$(sed -n "s|^.*$backend.* ready: ready after .* at [a-z]*://[^ ]*:\([0-9][0-9]*\).*|\1|p" "$log" | awk 'NR == 1')
  [ -n "$port" ] && break
  grep "$backend.* failed: " "$log" >/dev/null && fail "$backend failed before it was ready"
  kill -0 "$bench" 2>/dev/null || fail "bench run ended before $backend was ready (is '$backend' a launched backend of $scenario?)"
  sleep 0.5
done

# The server: the process under bench (its child, whatever started it) whose command line runs engine.cli with
# this port; the harness's reaper and awk itself are no match.
server=$(ps -e -o pid=,ppid=,args= | awk -v root="$bench" -v port="$port" '
  { pid[NR] = $1; ppid[NR] = $2; $1 = ""; $2 = ""; args[NR] = $0 }
  END {
    under[root] = 1
    for (changed = 1; changed; ) {
      changed = 0
      for (i = 1; i <= NR; i++) if ((ppid[i] in under) && !(pid[i] in under)) { under[pid[i]] = 1; changed = 1 }
    }
    for (i = 1; i <= NR; i++)
      if ((pid[i] in under) && args[i] ~ /engine\.cli/ && args[i] ~ ("--port[= ]" port "( |$)")) { print pid[i]; exit }
  }')
[ -n "$server" ] || fail "no engine.cli process with --port $port under bench (pid $bench)"
say "$backend ready on port $port (server pid $server); sampling ${seconds}s after ${delay}s"
sleep "$delay"
kill -0 "$server" 2>/dev/null || fail "the server (pid $server) ended before sampling began (a run shorter than ${delay}s?)"

py-spy record --pid "$server" --duration "$seconds" --rate 200 --nonblocking --threads --idle --format raw \
  --output "$out/wall.txt" >"$out/pyspy-wall.log" 2>&1 &
wall=$!
py-spy record --pid "$server" --duration "$seconds" --rate 200 --nonblocking --threads --gil --format raw \
  --output "$out/gil.txt" >"$out/pyspy-gil.log" 2>&1 &
gil=$!
spy_rc=0
wait "$wall" || spy_rc=$?
wait "$gil" || spy_rc=$?
if [ "$spy_rc" != 0 ] || [ ! -s "$out/wall.txt" ] || [ ! -s "$out/gil.txt" ]; then
  cat "$out/pyspy-wall.log" "$out/pyspy-gil.log" >&2
  if grep -Ei 'permission|not permitted|ptrace' "$out/pyspy-wall.log" "$out/pyspy-gil.log" >/dev/null; then
    fail "py-spy could not attach to pid $server: no ptrace permission. Run as root, or as the server's user" \
      "after sudo sysctl kernel.yama.ptrace_scope=0 (in a container, root also needs --cap-add SYS_PTRACE)"
  fi
  fail "py-spy did not record pid $server (exit $spy_rc; logs above)"
fi

if grep "process exited" "$out/pyspy-wall.log" >/dev/null; then
  say "the server exited before ${seconds}s of sampling were up: the stacks include its idle end and shutdown (more REQUESTS or fewer SECONDS)"
fi
bench_rc=0
wait "$bench" || bench_rc=$?
[ "$bench_rc" = 0 ] || { say "bench run exited $bench_rc (the profile is kept); last lines of $log:"; tail -n 30 "$log" >&2; }
"$python" benchmarks/pyspy_summary.py "$out/wall.txt" "$out/gil.txt" >"$out/summary.txt"
cat "$out/summary.txt"
say "run folder under $out/run; stacks $out/wall.txt, $out/gil.txt; summary $out/summary.txt"
exit "$bench_rc"
