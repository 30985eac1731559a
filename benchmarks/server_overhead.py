"""The event loop's CPU per streamed token under N concurrent streaming clients, against `engine serve`'s own code.

Prints one JSON object. Run: .venv/bin/python benchmarks/server_overhead.py [--ref HEAD] [--clients 64] [--tokens 256]

Each measurement starts a fresh server process (engine.server.serve.serve, as `engine serve` runs it) over a tiny
random-weight Llama on the CPU with the demo tokenizer, and drives it from this process with httpx: every client
streams one request of --tokens tokens (ignore_eos, min_tokens), all at once. A side thread in the server reads the
CPU clock of the event-loop thread (the main thread, where uvicorn runs) and of the engine thread on request: the
clock time.thread_time() reads inside a thread (user plus system time, so the socket writes count), read from outside
through pthread_getcpuclockid, so the code measured is the tree's own and unchanged. Two windows:
- steady: from every client holding its first token to the first client 8 chunks short of its end, over the tokens
  the engine generated meanwhile (its generation_tokens_total): per-token work only.
- whole: from before the first request to after the last stream ended, over all streamed tokens: per-request work
  (HTTP, validation, chat template, tokenizing) included.
--ref REF runs the same measurement on the committed tree REF (git archive into a temporary folder) in the same
invocation, alternating with the working tree --repeat times (which goes first alternates too), so the ratio is old
over new, each the median of its runs, measured back to back. Figures on a 2-core VM vary by 10-20% from run to run:
take --repeat 3 or more. --profile DIR writes a cProfile of each server's event-loop thread, to see where it goes.
"""
import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "SAMPLE "


def serve_tree(tree: str, config: dict) -> None:
    """The server process: the tree's own serve(), plus a thread answering each stdin line with the threads' CPU."""
    sys.path.insert(0, tree)
    if config["switch_interval"] is not None:
        sys.setswitchinterval(config["switch_interval"])
    import engine
    from engine.server.serve import ServeArgs, serve

    loop_clock = time.pthread_getcpuclockid(threading.get_ident())
    loop_stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat")
    ticks = os.sysconf("SC_CLK_TCK")

    def answer() -> None:
        for _ in sys.stdin:
            engine_thread = next((t for t in threading.enumerate() if t.name == "engine-loop"), None)
            engine_cpu = time.clock_gettime(time.pthread_getcpuclockid(engine_thread.ident)) if engine_thread else 0.0
            utime, stime = (int(v) / ticks for v in loop_stat.read_text().rsplit(")", 1)[1].split()[11:13])
            sample = {"loop_cpu": time.clock_gettime(loop_clock), "loop_user": utime, "loop_system": stime,
                      "engine_cpu": engine_cpu,
                      "process_cpu": time.process_time(), "wall": time.perf_counter(), "engine_file": engine.__file__}
            print(SAMPLE + json.dumps(sample), flush=True)

    threading.Thread(target=answer, name="cpu-sampler", daemon=True).start()
    kwargs = dict(device="cpu", hf_config=config["hf_config"], max_num_seqs=config["clients"],
                  kv_cache_tokens=config["kv_cache_tokens"], max_model_len=config["max_model_len"])
    args = ServeArgs("random:custom", port=config["port"], tokenizer=config["tokenizer"], log_level="warning",
                     access_log=False, served_model_names=["tiny"], engine_kwargs=kwargs)
    if not config["profile"]:
        serve(args)
        return
    import cProfile
    import signal

    # uvicorn re-raises the SIGTERM it stopped on once it is done: let that end serve() here, not the process.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # cProfile follows only the thread that enables it: this one, which runs the event loop.
    with cProfile.Profile() as profile:
        serve(args)
    profile.dump_stats(config["profile"])


class Server:
    """One server process over `tree`; sample() returns its threads' CPU clocks."""

    def __init__(self, tree: Path, config: dict, log_path: Path) -> None:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(config["omp_threads"]),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-tree", str(tree), json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     cwd=tree, text=True, bufsize=1)
        self.url = f"http://127.0.0.1:{config['port']}"

    def sample(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(SAMPLE):
                return json.loads(line[len(SAMPLE):])
        raise RuntimeError(f"the server exited with {self.proc.wait()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def body(endpoint: str, i: int, tokens: int) -> tuple[str, dict]:
    # Greedy: sampling at temperature 1 over the 49,152 logits costs the engine ~2 ms a token on one CPU core, and
    # the engine's step would stretch to seconds at 64 streams, leaving the loop idle most of the time.
    common = {"model": "tiny", "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True, "stream": True,
              "stream_options": {"include_usage": True}, "temperature": 0.0}
    if endpoint == "chat" or (endpoint == "mixed" and i % 2):
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": f"Tell me story {i}."}]}
    return "/v1/completions", {**common, "prompt": f"Story {i}: once upon a time"}


class Load:
    """N streams at once; events mark when all have their first token and when the first is 8 short of its end."""

    def __init__(self, clients: int, tokens: int) -> None:
        self.clients = clients
        self.begun = 0
        self.all_begun = asyncio.Event()
        self.one_late = asyncio.Event()
        self.late_at = tokens - 8

    async def stream(self, http, endpoint: str, i: int, tokens: int) -> dict:
        path, payload = body(endpoint, i, tokens)
        first_token_at = 2 if path == "/v1/chat/completions" else 1  # a chat stream opens with the role alone
        events: list[bytes] = []
        rest = b""
        sent = time.perf_counter()
        first_token_s = None
        async with http.stream("POST", path, json=payload) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{path} answered {r.status_code}: {(await r.aread())[:500]!r}")
            async for data in r.aiter_raw():
                *done, rest = (rest + data).split(b"\n\n")
                events += done
                if first_token_s is None and len(events) >= first_token_at:
                    first_token_s = time.perf_counter() - sent
                    self.begun += 1
                    if self.begun == self.clients:
                        self.all_begun.set()
                if len(events) >= self.late_at:
                    self.one_late.set()
        assert events[-1] == b"data: [DONE]" and not rest, (events[-3:], rest)
        chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
        return {"usage": chunks[-1]["usage"], "chunks": len(chunks), "first_token_s": first_token_s}


async def drive(server: Server, config: dict) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=config["clients"] + 4, max_keepalive_connections=config["clients"] + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as http:
        warm = Load(config["clients"], 8)
        await asyncio.gather(*[warm.stream(http, config["endpoint"], i, 8) for i in range(config["clients"])])
        load = Load(config["clients"], config["tokens"])
        first = await asyncio.to_thread(server.sample)
        generated_before = await generated(http)
        tasks = [asyncio.ensure_future(load.stream(http, config["endpoint"], 1000 + i, config["tokens"]))
                 for i in range(config["clients"])]
        await load.all_begun.wait()
        begin = await asyncio.to_thread(server.sample)
        generated_begin = await generated(http)
        await load.one_late.wait()
        late = await asyncio.to_thread(server.sample)
        generated_late = await generated(http)
        results = await asyncio.gather(*tasks)
        last = await asyncio.to_thread(server.sample)
        generated_after = await generated(http)
    streamed = sum(r["usage"]["completion_tokens"] for r in results)
    if streamed != config["clients"] * config["tokens"] or generated_after - generated_before != streamed:
        raise RuntimeError(f"streamed {streamed} tokens, the engine generated {generated_after - generated_before}, "
                           f"asked for {config['clients'] * config['tokens']}")
    steady_tokens = generated_late - generated_begin
    if steady_tokens < 4 * config["clients"]:
        # The first stream neared its end before the last one began (a slow start on a busy host): no window holds
        # all the streams at once, so there is no steady figure, only the whole run's.
        steady_tokens = 0

    def per_token(a: dict, b: dict, key: str, n: int) -> float | None:
        return round((b[key] - a[key]) / n * 1e6, 2) if n else None

    return {
        "engine_file": first["engine_file"],
        "steady_tokens": steady_tokens,
        "steady_loop_cpu_us_per_token": per_token(begin, late, "loop_cpu", steady_tokens),
        "steady_engine_cpu_us_per_token": per_token(begin, late, "engine_cpu", steady_tokens),
        "steady_tokens_per_s": round(steady_tokens / (late["wall"] - begin["wall"]), 1) if steady_tokens else None,
        "whole_tokens": streamed,
        "whole_loop_cpu_us_per_token": per_token(first, last, "loop_cpu", streamed),
        # From the kernel's tick accounting: only a rough split, over the whole run for enough ticks.
        "whole_loop_system_share": round((last["loop_system"] - first["loop_system"])
                                         / (last["loop_user"] + last["loop_system"] - first["loop_user"]
                                            - first["loop_system"]), 2),
        "whole_engine_cpu_us_per_token": per_token(first, last, "engine_cpu", streamed),
        "whole_process_cpu_us_per_token": per_token(first, last, "process_cpu", streamed),
        "whole_tokens_per_s": round(streamed / (last["wall"] - first["wall"]), 1),
        "chunks_per_request": statistics.mean(r["chunks"] for r in results),
        "first_token_ms_p50": round(statistics.median(r["first_token_s"] for r in results) * 1e3, 1),
        "first_token_ms_max": round(max(r["first_token_s"] for r in results) * 1e3, 1),
    }


async def generated(http) -> float:
    text = (await http.get("/metrics")).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("pagebench:generation_tokens_total "))


def measure(tree: Path, config: dict, log_dir: Path) -> dict:
    import httpx
    from tests.server_process import free_port

    config = {**config, "port": free_port()}
    log_path = log_dir / f"server-{config['port']}.log"
    server = Server(tree, config, log_path)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 300 s")
            time.sleep(0.25)
        return asyncio.run(drive(server, config))
    finally:
        server.stop()


def archive(ref: str, into: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return commit


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if not isinstance(v, str)]
    medians = {k: [r[k] for r in runs if r[k] is not None] for k in keys}
    return {k: round(statistics.median(v), 2) if v else None for k, v in medians.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-tree":
        serve_tree(sys.argv[2], json.loads(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", help="also measure this commit (e.g. HEAD), alternating with the working tree")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256, help="per stream; the steady window is about this long, "
                                                           "less the spread of the streams' starts")
    ap.add_argument("--endpoint", choices=("chat", "completions", "mixed"), default="chat")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per tree")
    ap.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of the server (its torch ops)")
    ap.add_argument("--profile", type=Path, help="write a cProfile of each server's event-loop thread here (slows it)")
    ap.add_argument("--switch-interval", type=float, help="sys.setswitchinterval in the server (default: Python's)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from engine.demo import demo_model_path
    from tests.server_process import TINY_LLAMA

    config = {"clients": args.clients, "tokens": args.tokens, "endpoint": args.endpoint, "hf_config": TINY_LLAMA,
              "tokenizer": demo_model_path(), "max_model_len": 512, "omp_threads": args.omp_threads,
              "kv_cache_tokens": args.clients * 512, "switch_interval": args.switch_interval, "profile": None}
    with tempfile.TemporaryDirectory(prefix="server_overhead-") as tmp:
        trees = {"worktree": ROOT}
        commits = {}
        if args.ref:
            ref_tree = Path(tmp) / "ref"
            commits[args.ref] = archive(args.ref, ref_tree)
            trees = {args.ref: ref_tree, "worktree": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for i in range(args.repeat):
            for name, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    label = f"{name.replace('/', '_')}-{len(runs[name])}"
                    config["profile"] = str(args.profile.resolve() / f"loop-{label}.pstats")
                runs[name].append(measure(tree, config, Path(tmp)))
    result = {
        "benchmark": "server_overhead", "machine": f"{platform.processor() or platform.machine()}, "
                                                   f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "config": {k: v for k, v in config.items() if k not in ("hf_config", "tokenizer")},
        "commits": commits, "runs": runs, "median": {name: median_of(r) for name, r in runs.items()},
    }
    if args.ref:
        old, new = result["median"][args.ref], result["median"]["worktree"]
        result["old_over_new"] = {k: ratio(old[k], new[k]) for k in
                                  ("steady_loop_cpu_us_per_token", "whole_loop_cpu_us_per_token",
                                   "whole_process_cpu_us_per_token")}
        result["new_over_old"] = {k: ratio(new[k], old[k]) for k in
                                  ("steady_tokens_per_s", "whole_tokens_per_s")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
