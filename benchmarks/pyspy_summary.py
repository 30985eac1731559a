"""Summarizes py-spy's raw (collapsed) stacks per thread: samples by the innermost frames that matter.

    python benchmarks/pyspy_summary.py wall.txt [gil.txt ...]

For each file and thread (py-spy record --threads --format raw): its share of the samples, then the functions where
the samples sit (self time, the innermost frame) and the engine, harness or benchmark functions they run under
(inclusive time), largest first. A function's lines are merged: `step (engine/llm_engine.py:180)` and
`step (engine/llm_engine.py:194)` count as `step (engine/llm_engine.py)`.
"""
import collections
import re
import sys

# Our code as py-spy names it: relative to the server's working directory (`step (engine/llm_engine.py:180)`), or
# an absolute path ending in one of our packages; not a third-party package's own engine/ folder.
OURS = re.compile(r"\((?:/[^()]*/)?(?:engine|harness|benchmarks)/")
LEGEND = ("self: samples whose innermost frame is that function; incl: samples with that function (ours only) "
          "anywhere on the stack. Percentages are of the thread's samples. A --gil file holds samples only while "
          "some thread held the GIL.")


def frames_of(stack: str) -> list[str]:
    """Frames without line numbers, so that a function's samples add up."""
    return [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]


def collect(path: str) -> tuple[int, dict[str, collections.Counter], dict[str, collections.Counter]]:
    """(total samples, self samples by thread and innermost frame, inclusive samples by thread and our frame)."""
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    ours: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = frames_of(stack)
            thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
            leaf = frames[-1] if frames else "?"
            threads[thread][leaf] += n
            # Once per sample however deep the recursion; dict, not set: ties keep the stack's order, outer first.
            for fr in dict.fromkeys(fr for fr in frames if OURS.search(fr)):
                ours[thread][fr] += n
    return total, threads, ours


def summarize(path: str, top: int = 18) -> str:
    total, threads, ours = collect(path)
    lines = [f"== {path}: {total} samples"]
    for thread, leaves in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(leaves.values())
        lines.append(f"-- {thread}: {n} samples ({100 * n / max(total, 1):.1f}%)")
        for leaf, k in leaves.most_common(top):
            lines.append(f"   self {100 * k / n:5.1f}%  {leaf}")
        for fr, k in ours[thread].most_common(top):
            lines.append(f"   incl {100 * k / n:5.1f}%  {fr}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n\n".join([LEGEND] + [summarize(p) for p in sys.argv[1:]]))
