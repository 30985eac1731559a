import pytest
import torch

from engine.sampler import SampledTokens, Sampler, _top_k_top_p
from engine.sampling_params import SamplingParams
from engine.sequence import RequestMetrics, Sequence


def seq(rid: str, **kw) -> Sequence:
    return Sequence(rid, [1, 2, 3], SamplingParams(**kw), RequestMetrics(0.0))


def test_top_k_keeps_k_best():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = _top_k_top_p(logits, [2], [1.0])
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_set_over_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = _top_k_top_p(probs.log(), [-1], [0.8])
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = _top_k_top_p(probs.log(), [-1], [0.81])
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]


def test_greedy_and_seeded_rows_are_reproducible_in_any_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 100)
    a = Sampler(torch.device("cpu"), seed=1)
    b = Sampler(torch.device("cpu"), seed=2)
    s1 = [seq("g", temperature=0.0), seq("s", temperature=1.0, seed=42), seq("u", temperature=1.0)]
    s2 = [seq("s", temperature=1.0, seed=42)]
    first = [a(logits, s1, []).tolist()[1] for _ in range(5)]
    second = [b(logits[1:2], s2, []).tolist()[0] for _ in range(5)]
    assert first == second
    assert a(logits, s1, []).tolist()[0] == int(logits[0].argmax())


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    s = Sampler(torch.device("cpu"), seed=0)
    seqs = [seq(f"r{i}", temperature=1.0) for i in range(4000)]
    got = s(probs.log().expand(4000, 3).clone(), seqs, [])
    freq = torch.bincount(got, minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.tensor([[0.0, 10.0, 9.0, 1.0]])
    s = Sampler(torch.device("cpu"), seed=0)
    early = seq("a", temperature=0.0, min_tokens=2, stop_token_ids=[2])
    assert s(logits.clone(), [early], [1]).tolist() == [3]


def test_sampled_tokens_read_back_as_sampled():
    tokens = torch.tensor([5, 0, 151643])
    assert SampledTokens.start_copy(tokens).read() == [5, 0, 151643]
    if torch.cuda.is_available():
        assert SampledTokens.start_copy(tokens.cuda()).read() == [5, 0, 151643]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_sampling_never_waits_for_the_device():
    """Asynchronous scheduling samples step N+1 while step N runs: a host sync here would serialise them."""
    s = Sampler(torch.device("cuda"), seed=0)
    logits = torch.randn(4, 1000, device="cuda")
    batches = [[seq("g", temperature=0.0, min_tokens=5, stop_token_ids=[7])],
               [seq("a", temperature=0.7, top_k=50, top_p=0.9, min_tokens=3), seq("b", temperature=0.0),
                seq("c", temperature=1.0, seed=3), seq("d", temperature=1.0)],
               [seq("e", temperature=0.8), seq("f", temperature=1.2, top_p=0.5)]]
    for batch in batches:
        s(logits[: len(batch)].clone(), batch, [2])  # first calls may allocate pinned memory
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            s(logits[: len(batch)].clone(), batch, [2])
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_a_batch_of_unseeded_rows_draws_what_it_drew_row_by_row_before():
    """All-unseeded batches take their noise in one call; the draws equal filling every row of a fresh tensor."""
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    rows = [seq(f"u{i}", temperature=0.9) for i in range(3)]
    got = Sampler(torch.device("cpu"), seed=5)(logits.clone(), rows, [])
    gen = torch.Generator().manual_seed(5)
    probs = (logits / 0.9).softmax(-1)
    noise = torch.empty_like(probs)
    noise[[0, 1, 2]] = torch.empty(3, 50).exponential_(generator=gen)
    assert got.tolist() == (probs / noise).argmax(-1).tolist()
