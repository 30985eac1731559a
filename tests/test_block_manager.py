"""Block-manager invariants under random add/step/abort sequences (hypothesis)."""
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.block_manager import BlockManager, block_hash, token_bytes
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import RequestMetrics, Sequence, SequenceStatus


def make_seq(rid: str, tokens: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(rid, tokens, SamplingParams(max_tokens=max_tokens), RequestMetrics(0.0))


def check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    refs = [0] * bm.num_blocks
    for seq in live:
        assert len(set(seq.block_table)) == len(seq.block_table)
        for b in seq.block_table:
            refs[b] += 1
    assert [b.ref_count for b in bm.blocks] == refs
    assert set(bm.free) == {i for i, r in enumerate(refs) if r == 0}
    for h, b in bm.cached.items():
        assert bm.blocks[b].hash == h


def test_prefix_blocks_are_shared_not_copied():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq("a", list(range(10)))
    assert bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.cache_full_blocks(a)
    b = make_seq("b", list(range(8)) + [99, 98, 97])
    hits = bm.find_cached_prefix(b)
    assert hits == a.block_table[:2]
    assert bm.allocate(b, 3, hits)
    assert b.block_table[:2] == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    bm.free_sequence(a)
    bm.free_sequence(b)
    assert bm.num_free_blocks == 8
    c = make_seq("c", list(range(9)))
    assert len(bm.find_cached_prefix(c)) == 2


def test_collision_is_checked_not_trusted():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq("a", [1, 2, 3])
    bm.allocate(a, 3)
    a.num_computed_tokens = 3
    bm.cache_full_blocks(a)
    forged = block_hash(b"", token_bytes([7, 8]))
    bm.cached[forged] = a.block_table[0]
    b = make_seq("b", [7, 8, 9])
    assert bm.find_cached_prefix(b) == []


def test_lru_eviction_keeps_recent_prefixes():
    bm = BlockManager(num_blocks=4, block_size=2)
    old = make_seq("old", [1, 2, 3])
    bm.allocate(old, 3); old.num_computed_tokens = 3; bm.cache_full_blocks(old); bm.free_sequence(old)
    new = make_seq("new", [4, 5, 6])
    bm.allocate(new, 3); new.num_computed_tokens = 3; bm.cache_full_blocks(new); bm.free_sequence(new)
    filler = make_seq("f", [9, 9])
    assert bm.allocate(filler, 2)
    assert len(bm.find_cached_prefix(make_seq("x", [4, 5, 0]))) == 1


def test_a_remembered_lookup_is_not_trusted_once_its_blocks_are_handed_out():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq("a", [1, 2, 3, 4, 5])
    bm.allocate(a, 5); a.num_computed_tokens = 5; bm.cache_full_blocks(a); bm.free_sequence(a)
    shared = bm.find_cached_prefix(make_seq("b2", [1, 2, 3, 4, 9]))
    assert len(shared) == 2 and bm.last_lookup.hits == shared
    other = make_seq("o", [6, 6, 7, 7, 8, 8, 5])  # takes every block, the remembered ones included
    assert bm.allocate(other, 7); other.num_computed_tokens = 7; bm.cache_full_blocks(other); bm.free_sequence(other)
    assert bm.find_cached_prefix(make_seq("c", [1, 2, 3, 4, 9])) == []


def checked_lookups(bm: BlockManager) -> None:
    """Every lookup also done from scratch, without the last one's memory: the same hits and names."""
    lookup = bm.find_cached_prefix

    def find(seq: Sequence) -> list[int]:
        fresh, remembered = make_seq("ref", list(seq.token_ids)), bm.last_lookup
        bm.last_lookup = None
        expected = lookup(fresh)
        bm.last_lookup = remembered
        hits = lookup(seq)
        assert hits == expected and seq.block_hashes[: len(hits)] == fresh.block_hashes[: len(hits)]
        return hits

    bm.find_cached_prefix = find


def run_step(sched: Scheduler, bm: BlockManager) -> bool:
    """What the engine does with a scheduled batch, without a model: compute, name full blocks, emit a token."""
    batch = sched.schedule()
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens + n
        seq.num_computed_tokens += n
        bm.cache_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(11)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq, "length")
    return bool(batch)


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.integers(0, 3)),
    st.tuples(st.just("step"), st.integers(1, 5)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, block_size=st.sampled_from([1, 2, 4, 16]), caching=st.booleans(), budget=st.integers(1, 64))
def test_random_add_step_abort_keeps_invariants(ops, block_size, caching, budget):
    num_blocks = 64 // block_size + 2
    bm = BlockManager(num_blocks, block_size, caching)
    checked_lookups(bm)
    sched = Scheduler(bm, max_num_seqs=6, max_num_batched_tokens=budget)
    seqs: list[Sequence] = []
    prefixes = [[7] * 20, list(range(20)), [3, 1, 4, 1, 5, 9, 2, 6] * 3, []]
    for op in ops:
        if op[0] == "add":
            _, n, max_tokens, prefix = op
            tokens = (prefixes[prefix] + [len(seqs) % 50 + 1] * n)[: max(1, n)]
            if len(tokens) + max_tokens > num_blocks * block_size:
                continue
            seq = make_seq(f"r{len(seqs)}", tokens, max_tokens)
            seqs.append(seq)
            sched.add(seq)
        elif op[0] == "step":
            for _ in range(op[1]):
                run_step(sched, bm)
                check_invariants(bm, sched.running)
        else:
            live = [s for s in seqs if not s.is_finished]
            if live:
                sched.finish(live[op[1] % len(live)], "abort")
            check_invariants(bm, sched.running)
    for _ in range(2000):
        if not sched.has_unfinished():
            break
        assert run_step(sched, bm), "scheduler made no progress: deadlock"
    assert not sched.has_unfinished()
    assert all(s.status is SequenceStatus.FINISHED for s in seqs)
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert bm.num_free_blocks == num_blocks


def test_prefix_lookup_benchmark_shares_the_prefix_and_prints_json():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/prefix_lookup.py", "--requests", "3", "--shared", "70",
                          "--own", "5", "--repeat", "2"], cwd=root, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root), "PATH": ""})
    row = json.loads(out.stdout)
    assert row["requests"] == 3 and len(row["schedule_ms_all"]) == 2 and row["schedule_ms_median"] > 0


@given(st.lists(st.integers(0, 2**40), max_size=300))
def test_token_bytes_are_the_int64_array_and_the_prompt_s_are_made_with_the_sequence(ids):
    from array import array

    assert token_bytes(ids) == array("q", ids).tobytes()
    assert make_seq("s", ids or [1]).prompt_bytes == token_bytes(ids or [1])
