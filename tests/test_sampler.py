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
