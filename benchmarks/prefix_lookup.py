"""Host time of one scheduling step that admits N requests behind a cached shared prefix: the prefix lookups
(block names and byte comparisons), allocation and bookkeeping the engine thread does before the GPU can start;
and, apart, what making each request's Sequence costs (the server's thread, while the GPU runs earlier steps).
Prints JSON. No model and no GPU: the scheduler and block manager alone.

    python benchmarks/prefix_lookup.py [--requests 63] [--shared 2000] [--own 32] [--repeat 5]
"""
import argparse
import json
import platform
import random
import statistics
import time

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import RequestMetrics, Sequence


def one_burst(requests: int, shared: int, own: int, rng: random.Random) -> tuple[float, float]:
    bm = BlockManager(num_blocks=(requests + 1) * (shared + own) // 16 + 64, block_size=16)
    scheduler = Scheduler(bm, max_num_seqs=requests + 1, max_num_batched_tokens=1 << 20)
    system = [rng.randrange(3, 150_000) for _ in range(shared)]

    prompts = [system + [rng.randrange(3, 150_000) for _ in range(own)] for _ in range(requests + 1)]
    started = time.perf_counter()
    seqs = [Sequence(f"r{i}", p, SamplingParams(max_tokens=16), RequestMetrics(0.0)) for i, p in enumerate(prompts)]
    make_seconds = (time.perf_counter() - started) / len(seqs)
    first = seqs[0]
    scheduler.add(first)
    first.num_computed_tokens += scheduler.schedule().num_new_tokens[0]
    bm.cache_full_blocks(first)
    for seq in seqs[1:]:
        scheduler.add(seq)
    started = time.perf_counter()
    batch = scheduler.schedule()
    seconds = time.perf_counter() - started
    assert sum(batch.num_new_tokens) == requests * (own + shared % 16), "the prefix was not shared"
    return seconds, make_seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=63)
    ap.add_argument("--shared", type=int, default=2000)
    ap.add_argument("--own", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(0)
    times, makes = zip(*(one_burst(args.requests, args.shared, args.own, rng) for _ in range(args.repeat)))
    print(json.dumps({"requests": args.requests, "shared_tokens": args.shared, "own_tokens": args.own,
                      "schedule_ms_median": round(statistics.median(times) * 1e3, 3),
                      "schedule_ms_all": [round(t * 1e3, 3) for t in times],
                      "sequence_us_median": round(statistics.median(makes) * 1e6, 2), "cpu": platform.processor() or
                      platform.machine(), "python": platform.python_version()}))


if __name__ == "__main__":
    main()
