"""Engine-core figures on the CPU: KV utilization at peak, prefix-cache hit rate, tokens/s beside HF generate().

Prints one JSON object. Run: .venv/bin/python benchmarks/engine_cpu.py [--out FILE] [--speed-only]
(--speed-only: the engine's tokens/s alone, best of --rounds, for comparing two trees back to back)
"""
import argparse
import json
import os
import platform
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from engine import LLM, SamplingParams
from engine.demo import demo_model_path


def kv_utilization(llm: LLM, rng: random.Random) -> dict:
    vocab = llm.engine.model_config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(20, 300))] for _ in range(48)]
    params = [SamplingParams(temperature=0.0, max_tokens=(n := rng.randint(8, 64)), min_tokens=n) for _ in prompts]
    llm.generate(prompts, params)
    s = llm.engine.stats()
    return {"requests": len(prompts), "peak_blocks_used": s.peak_kv_blocks_used, "blocks_total": s.kv_blocks_total,
            "kv_utilization_at_peak": round(s.kv_utilization_at_peak, 4), "preemptions": s.num_preemptions}


def prefix_hit_rate(llm: LLM, rng: random.Random) -> dict:
    vocab = llm.engine.model_config.vocab_size
    system = [rng.randrange(3, vocab) for _ in range(512)]
    prompts = [system + [rng.randrange(3, vocab) for _ in range(rng.randint(10, 40))] for _ in range(16)]
    before = llm.engine.stats()
    t = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=4, min_tokens=4))
    after = llm.engine.stats()
    queries = after.prefix_cache_queries - before.prefix_cache_queries
    hits = after.prefix_cache_hits - before.prefix_cache_hits
    return {"requests": len(prompts), "shared_prefix_tokens": len(system), "prompt_tokens": queries,
            "cached_tokens": hits, "hit_rate": round(hits / queries, 4), "seconds": round(time.perf_counter() - t, 2)}


def engine_tps(llm: LLM, prompt: list[int], batch: int, new_tokens: int, rounds: int = 1) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens)
    llm.generate([prompt] * batch, params)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        llm.generate([prompt] * batch, params)
        best = min(best, time.perf_counter() - t)
    return batch * new_tokens / best


def tea_prompt(llm: LLM) -> list[int]:
    tok = llm.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": "Tell me about the history of tea."}]))


def hf_tps(model, prompt: list[int], batch: int, new_tokens: int) -> float:
    ids = torch.tensor([prompt] * batch)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=2,
              attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        model.generate(ids, **kw)
        t = time.perf_counter()
        model.generate(ids, **kw)
    return batch * new_tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(0)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "model": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantized (engine: fp32 unless named; HF: fp32)"}
    if args.speed_only:
        llm = LLM("demo", dtype="bfloat16", device="cpu")
        prompt = tea_prompt(llm)
        result["threads"] = torch.get_num_threads()
        result["engine_bfloat16_tokens_per_s"] = {
            f"batch_{b}": round(engine_tps(llm, prompt, b, args.new_tokens, args.rounds), 1) for b in (1, 8, 32)}
        print(json.dumps(result))
        return
    pool = LLM("demo", dtype="float32", device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=1024)
    result["kv"] = kv_utilization(pool, rng)
    result["prefix"] = prefix_hit_rate(LLM("demo", dtype="float32", device="cpu"), rng)
    llm = LLM("demo", dtype="float32", device="cpu")
    result["threads"] = torch.get_num_threads()  # the engine's choice; Hugging Face runs with the same
    prompt = tea_prompt(llm)
    result["tokens_per_s"] = {f"batch_{b}": {"engine": round(engine_tps(llm, prompt, b, args.new_tokens), 1)}
                              for b in (1, 8)}
    del llm, pool
    for dtype in ("float16", "bfloat16"):
        half = LLM("demo", dtype=dtype, device="cpu")
        for b in (1, 8):
            result["tokens_per_s"][f"batch_{b}"][f"engine_{dtype}"] = round(engine_tps(half, prompt, b, args.new_tokens), 1)
        del half
    # Hugging Face last, in the same process: its GGUF loading leaves worker threads that would tax the engine's runs.
    from transformers import AutoModelForCausalLM

    path = demo_model_path()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    for b in (1, 8):
        result["tokens_per_s"][f"batch_{b}"]["hf_generate"] = round(hf_tps(hf, prompt, b, args.new_tokens), 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
