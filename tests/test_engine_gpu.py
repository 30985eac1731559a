"""The whole engine on a GPU (Triton kernels, CUDA graphs) against Hugging Face generate()."""
import random

import pytest
import torch

from engine import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

SMALL = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
             initializer_range=0.15, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
ARCHES = [("Qwen2", {}), ("Qwen3", {"head_dim": 128}), ("Llama", {})]
NEW = 32


def setup(tmp_path, arch, extra, dtype):
    import transformers

    config = getattr(transformers, f"{arch}Config")(**SMALL, **extra)
    torch.manual_seed(0)
    hf = getattr(transformers, f"{arch}ForCausalLM")(config).to("cuda", dtype).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (5, 16, 47, 130, 300)]
    llm = LLM(str(tmp_path), dtype=str(dtype).removeprefix("torch."), device="cuda", kv_cache_tokens=8192,
              max_num_batched_tokens=256)
    assert llm.engine.runner.graphs is not None, "decode should run under CUDA graphs"
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW))
    return hf, prompts, outs


def hf_greedy(hf, prompt):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=NEW, min_new_tokens=NEW,
                          do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch, extra", ARCHES)
def test_fp32_greedy_is_token_identical(tmp_path, arch, extra):
    hf, prompts, outs = setup(tmp_path, arch, extra, torch.float32)
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(hf, prompt)


@pytest.mark.parametrize("arch, extra", ARCHES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_as_faithful_as_hf(request, tmp_path, arch, extra, dtype):
    """16-bit floats round differently in two correct implementations, so the judge is the fp32 model:
    teacher-forced along its greedy path, the engine in 16 bits must pick the fp32 model's next token
    about as often as Hugging Face in the same 16 bits does."""
    if arch == "Qwen3" and dtype == torch.bfloat16:
        # Strict: the day the engine's bf16 path is found and fixed, this marker must go.
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "known since 2026-11-26 (945ca3f), still at 53e9e08: 11 of 160 against Hugging Face's 2, the bound 8; "
            "BENCHMARKS.md, Correctness on the GPU")))
    hf, prompts, _ = setup(tmp_path, arch, extra, dtype)
    hf32 = hf.float()
    contexts, expected = [], []
    for prompt in prompts:
        ref = hf_greedy(hf32, prompt)
        for k in range(NEW):
            contexts.append(prompt + ref[:k])
            expected.append(ref[k])
    hf16 = hf32.to(dtype)
    with torch.no_grad():
        hf_choice = [int(hf16(torch.tensor([c], device="cuda")).logits[0, -1].argmax()) for c in contexts]
    llm = LLM(str(tmp_path), dtype=str(dtype).removeprefix("torch."), device="cuda", kv_cache_tokens=65536)
    outs = llm.generate(contexts, SamplingParams(temperature=0.0, max_tokens=1, min_tokens=1))
    ours_wrong = sum(o.token_ids[0] != e for o, e in zip(outs, expected))
    hf_wrong = sum(h != e for h, e in zip(hf_choice, expected))
    # Measured on an H100 (2026-11-25), Qwen2 bf16: 17 of 160 against Hugging Face's 9; the bound catches
    # real faults (a wrong mask or table agrees almost never) while that gap is being chased.
    assert ours_wrong <= 2 * hf_wrong + 4, (ours_wrong, hf_wrong, len(contexts))


def test_async_scheduling_reads_each_step_without_waiting_for_the_next_and_agrees(tmp_path):
    """Under asynchronous scheduling a step's tokens come back through pinned memory and an event of their own;
    the tokens must be exactly the synchronous engine's, with ragged lengths and early stops in the mix."""
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (3, 17, 64, 200, 9, 33)]
    params = [SamplingParams(temperature=0.0, max_tokens=k, min_tokens=min(k, 4)) for k in (1, 5, 40, 17, 64, 2)]
    results = []
    for async_scheduling in (False, True):
        llm = LLM.from_config({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **SMALL},
                              dtype="bfloat16", device="cuda", kv_cache_tokens=8192, max_num_batched_tokens=128,
                              async_scheduling=async_scheduling)
        results.append([o.token_ids for o in llm.generate(prompts, params)])
        llm.close()
    assert results[0] == results[1]
    assert [len(t) for t in results[0]][0] == 1


def test_launching_any_step_never_waits_for_the_gpu():
    """Queuing a step (inputs, kernels, sampling) must not wait for the GPU, or asynchronous scheduling launches a
    prefill step only after the one ahead ends: chunked prefills, mixed steps and graph decodes, each launched under
    torch's sync debug mode."""
    rng = random.Random(2)
    llm = LLM.from_config({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **SMALL, "head_dim": 128},
                          dtype="bfloat16", device="cuda", kv_cache_tokens=8192, max_num_batched_tokens=96)
    runner = llm.engine.runner
    launch, kinds = runner.launch, set()

    def strict_launch(batch, *args):
        kinds.add("decode" if batch.num_decodes == len(batch.seqs) else "mixed" if batch.num_decodes else "prefill")
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(batch, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    llm.generate([[rng.randrange(3, 2048) for _ in range(8)]], SamplingParams(temperature=0.0, max_tokens=4))
    runner.launch = strict_launch
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (200, 7, 60, 130, 33)]
    params = [SamplingParams(temperature=t, max_tokens=12, min_tokens=6, seed=s)
              for t, s in ((0.0, None), (0.8, 3), (0.0, None), (1.0, None), (0.7, None))]
    outs = llm.generate(prompts, params)
    assert [len(o.token_ids) for o in outs] == [12] * 5 and kinds == {"decode", "mixed", "prefill"}, kinds


def test_prefill_and_mixed_steps_replay_piecewise_graphs_and_agree_with_eager():
    """Prompt chunks and mixed steps run as captured pieces between eager attention calls, padded to the next
    captured size: fp32 greedy tokens must be the eager engine's."""
    rng = random.Random(4)
    prompts = [[rng.randrange(3, 2048) for _ in range(n)] for n in (300, 7, 61, 130, 33)]
    params = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8)
    results, replays = [], []
    for eager in (True, False):
        llm = LLM.from_config({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **SMALL, "head_dim": 128},
                              dtype="float32", device="cuda", kv_cache_tokens=8192, max_num_batched_tokens=128,
                              enforce_eager=eager)
        pieces = llm.engine.runner.pieces
        assert (pieces is None) == eager
        if pieces is not None:
            assert set(pieces.graphs) == set(pieces.sizes) == {16, 32, 64, 128}
            run = pieces.run
            pieces.run = lambda size, n, meta: replays.append((size, n)) or run(size, n, meta)
        results.append([o.token_ids for o in llm.generate(prompts, params)])
        llm.close()
    assert results[0] == results[1]
    assert len(replays) >= 4 and any(size > n for size, n in replays), replays
