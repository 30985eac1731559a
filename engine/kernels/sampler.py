"""Token sampling on the device without a host sync: greedy, temperature, top-k and top-p in one call.

Sampling is a Gumbel race: argmax over kept tokens of logit / T - log(-log(U)), U ~ U[0, 1), draws a token with
probability softmax(logit / T) restricted to the kept set, so no normalisation pass is needed. The kept set is
{logit >= threshold}; the per-row threshold comes from one sort when any row filters (top-k, then top-p on the
top-k-renormalised distribution, as vLLM and Hugging Face order them). On CUDA the race runs as a Triton kernel over
vocabulary chunks with Philox noise seeded from the generator; on the CPU it runs as torch ops.
"""
import torch
import triton
import triton.language as tl

from engine.kernels.common import use_triton

CHUNK = 4096


@triton.jit
def _race_kernel(logits_ptr, temperatures_ptr, thresholds_ptr, seed_ptr, best_score_ptr, best_index_ptr, vocab,
                 stride_l, num_chunks, CHUNK: tl.constexpr, BLOCK: tl.constexpr, RANDOM: tl.constexpr,
                 FILTERED: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    temperature = tl.load(temperatures_ptr + row).to(tl.float32)
    greedy = temperature <= 0.0
    inv_t = 1.0 / tl.where(greedy, 1.0, temperature)
    if FILTERED:
        threshold = tl.load(thresholds_ptr + row)
    if RANDOM:
        seed = tl.load(seed_ptr)
    best = tl.full([], float("-inf"), tl.float32)
    best_index = tl.full([], 0, tl.int32) + chunk * CHUNK
    for start in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, vocab), BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        x = tl.load(logits_ptr + row.to(tl.int64) * stride_l + offs, mask=mask, other=float("-inf")).to(tl.float32)
        score = x
        if RANDOM:
            u = tl.rand(seed, row * vocab + offs)
            race = x * inv_t - tl.log(-tl.log(u))
            if FILTERED:
                race = tl.where(x >= threshold, race, float("-inf"))
            score = tl.where(greedy, x, race)
        score = tl.where(score == score, score, float("-inf"))
        block_best, block_index = tl.max(score, 0, return_indices=True)
        better = block_best > best
        best = tl.where(better, block_best, best)
        best_index = tl.where(better, start + block_index, best_index)
    tl.store(best_score_ptr + row * num_chunks + chunk, best)
    tl.store(best_index_ptr + row * num_chunks + chunk, best_index.to(tl.int64))


def keep_thresholds(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor,
                    top_ps: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest logit still kept by top-k (<= 0 or >= V: off) and then top-p (1.0: off)."""
    vocab = logits.size(1)
    ordered = logits.float().sort(dim=-1, descending=True).values
    k = torch.where((top_ks > 0) & (top_ks < vocab), top_ks, vocab).long()
    ranks = torch.arange(vocab, device=logits.device)
    scaled = (ordered - ordered[:, :1]) / temperatures.float().clamp_min(1e-6).unsqueeze(1)
    probs = scaled.exp().masked_fill_(ranks >= k.unsqueeze(1), 0.0)
    probs /= probs.sum(-1, keepdim=True)
    mass_before = probs.cumsum(-1) - probs
    within_p = (mass_before < top_ps.float().unsqueeze(1)).sum(-1)
    kept = torch.minimum(k, within_p).clamp_min(1)
    return ordered.gather(1, (kept - 1).unsqueeze(1)).squeeze(1)


def _sample_torch(logits: torch.Tensor, temperatures: torch.Tensor, thresholds: torch.Tensor | None,
                  generator: torch.Generator | None, all_greedy: bool) -> torch.Tensor:
    x = logits.float()
    greedy_ids = x.nan_to_num(nan=float("-inf")).argmax(-1)
    if all_greedy:
        return greedy_ids
    t = temperatures.float().unsqueeze(1)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    race = x / torch.where(t > 0, t, 1.0) - (-u.log()).log()
    if thresholds is not None:
        race = race.masked_fill(x < thresholds.unsqueeze(1), float("-inf"))
    race_ids = race.nan_to_num(nan=float("-inf")).argmax(-1)
    return torch.where(temperatures > 0, race_ids, greedy_ids)


def sample(logits: torch.Tensor, temperatures: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
           generator: torch.Generator | None = None, *, all_greedy: bool = False,
           filtered: bool = True) -> torch.Tensor:
    """logits [B, V] -> token ids [B] int64. Rows with temperature 0 are greedy (first maximum, like argmax).

    all_greedy=True skips the noise; filtered=False skips the sort when the caller knows no row uses top-k or top-p.
    Both are host-side facts the scheduler has, so the call stays free of device-to-host reads.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    batch, vocab = logits.shape
    thresholds = None if all_greedy or not filtered else keep_thresholds(logits, temperatures, top_ks, top_ps)
    if not use_triton(logits):
        return _sample_torch(logits, temperatures, thresholds, generator, all_greedy)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    num_chunks = triton.cdiv(vocab, CHUNK)
    seed = (torch.randint(0, 2**31 - 1, (1,), device=logits.device, generator=generator, dtype=torch.int64)
            if not all_greedy else temperatures)
    best_score = torch.empty(batch, num_chunks, dtype=torch.float32, device=logits.device)
    best_index = torch.empty(batch, num_chunks, dtype=torch.int64, device=logits.device)
    if batch:
        _race_kernel[(batch, num_chunks)](
            logits, temperatures, thresholds if thresholds is not None else temperatures, seed, best_score,
            best_index, vocab, logits.stride(0), num_chunks, CHUNK=CHUNK,
            BLOCK=min(1024, triton.next_power_of_2(vocab)), RANDOM=not all_greedy,
            FILTERED=thresholds is not None, num_warps=4)
    return best_index.gather(1, best_score.argmax(1, keepdim=True)).squeeze(1)
