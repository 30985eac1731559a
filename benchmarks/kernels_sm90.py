"""Compile every engine kernel for sm_90 (H100/H200) on any machine, GPU or not, and report what the compiler did.

Per kernel: registers, spills (local memory), shared memory, and the instruction mix that tells whether the loads are
16 bytes wide (LDG.E.128, LDGSTS.E.BYPASS.128), the dots run on tensor cores (HGMMA = wgmma, HMMA = mma.sync).
Uses triton's own ptxas/cuobjdump and its JIT binder (internals that move between triton releases).

    python benchmarks/kernels_sm90.py [--json PATH]
"""
import argparse
import collections
import json
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.compiler import compile as triton_compile  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from engine.kernels import (activation, decode_attention, extend_attention, kv_cache, norm,  # noqa: E402
                            rotary_embedding, rotary_kv, row_gemv, sampler)

TARGET = GPUTarget("cuda", 90, 32)
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
OPS = (r"\b(ACQBULK|PREEXIT|HGMMA\.\w+|HMMA(?:\.\w+)+|LDGSTS\.E(?:\.BYPASS)?(?:\.\d+)?|LDG\.E(?:\.\d+)?|STG\.E(?:\.\d+)?"
       r"|LDL|STL)\b")


def compile_sm90(fn: triton.runtime.JITFunction, args: tuple, kwargs: dict) -> dict:
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    kernel = triton_compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([f"{TOOLS}/cuobjdump", "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([f"{TOOLS}/cuobjdump", "-sass", path], capture_output=True, text=True).stdout
    res = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    # ACQBULK is griddepcontrol.wait: the 16-byte loads issued before it overlap the previous kernel (PDL).
    before_wait = sass.split("ACQBULK")[0] if "ACQBULK" in sass else ""
    return {"registers": int(res.group(1)), "stack": int(res.group(2)), "local": int(res.group(4)),
            "shared": kernel.metadata.shared, "ops": dict(collections.Counter(re.findall(OPS, sass))),
            "wide_loads_before_wait": before_wait.count("LDG.E.128")}


def cases() -> dict[str, tuple]:
    bf16, i32 = torch.bfloat16, torch.int32
    pdl = dict(PDL=True, launch_pdl=True)  # as the engine launches its decode-step kernels on sm_90
    out = {}
    for name, hq, hkv, d in (("qwen3-0.6b", 16, 8, 128), ("qwen2.5-7b", 28, 4, 128), ("smollm2", 9, 3, 64)):
        b, bs, splits = 8, 16, 4
        q = torch.empty(b, hq, d, dtype=bf16)
        kc = torch.empty(64, bs, hkv, d, dtype=bf16)
        bt, sl = torch.zeros(b, 128, dtype=i32), torch.zeros(b, dtype=i32)
        po, pl = torch.empty(b, hq, splits, d), torch.empty(b, hq, splits)
        block_n = decode_attention.decode_config(d)["BLOCK_N"]
        for s in (1, splits):
            out[f"decode {name} splits={s}"] = (decode_attention._decode_split_kernel, (
                q, kc, kc, bt, sl, q, po, pl, 0.1, q.stride(0), q.stride(1), q.stride(0), q.stride(1), bt.stride(0), s),
                dict(NUM_HEADS=hq, NUM_KV_HEADS=hkv, HEAD_DIM=d, BLOCK_SIZE=bs, BLOCK_G=16, BLOCK_D=d,
                     BLOCK_N=block_n, DIRECT=s == 1, UPCAST=False, PRECISION="tf32", num_warps=4, num_stages=2, **pdl))
        out[f"merge {name}"] = (decode_attention._decode_merge_kernel, (po, pl, q, q.stride(0), q.stride(1), splits),
                                dict(NUM_HEADS=hq, HEAD_DIM=d, BLOCK_D=d, BLOCK_S=splits, num_warps=2, **pdl))
        t = torch.empty(1024, hq, d, dtype=bf16)
        qsl = torch.zeros(2, dtype=i32)
        out[f"extend {name}"] = (extend_attention._extend_kernel, (
            t, kc, kc, t, bt, qsl, sl, 0.1, t.stride(0), t.stride(1), t.stride(0), t.stride(1), bt.stride(0)),
            dict(NUM_HEADS=hq, NUM_KV_HEADS=hkv, HEAD_DIM=d, BLOCK_SIZE=bs, BLOCK_D=d, UPCAST=False,
                 PRECISION="tf32", **extend_attention.extend_config(d, 1024)))
        out[f"extend packed {name}"] = (extend_attention._extend_packed_kernel, (
            t, kc, kc, t, bt, qsl, sl, 0.1, t.stride(0), t.stride(1), t.stride(0), t.stride(1), bt.stride(0)),
            dict(NUM_HEADS=hq, NUM_KV_HEADS=hkv, HEAD_DIM=d, BLOCK_SIZE=bs, BLOCK_D=d, UPCAST=False,
                 PRECISION="tf32", **extend_attention.extend_config(d, extend_attention.PACKED_MAX_QUERY_LEN)))
        kv = torch.empty(1024, hq + 2 * hkv, d, dtype=bf16)
        k, v = kv[:, hq:hq + hkv], kv[:, hq + hkv:]
        slots = torch.zeros(1024, dtype=torch.int64)
        out[f"store_kv {name}"] = (kv_cache._store_kv_kernel, (
            k, v, kc, kc, slots, k.stride(0), k.stride(1), v.stride(0), v.stride(1)),
            dict(NUM_KV_HEADS=hkv, HEAD_DIM=d, BLOCK_H=triton.next_power_of_2(hkv), BLOCK_D=d, num_warps=4))
        qv = kv[:, :hq]
        cache = torch.empty(4096, d)
        out[f"rotary {name}"] = (rotary_embedding._rotary_kernel, (
            slots, qv, k, t, t, cache, qv.stride(0), qv.stride(1), k.stride(0), k.stride(1), cache.stride(0)),
            dict(NUM_Q_HEADS=hq, NUM_K_HEADS=hkv, HALF=d // 2, BLOCK_HQ=triton.next_power_of_2(hq),
                 BLOCK_HK=triton.next_power_of_2(hkv), BLOCK_HALF=d // 2, num_warps=4))
        w = torch.empty(d, dtype=bf16)
        for norm_name, has_norm in (("", False), ("qk_norm+", True)):  # qk_norm: Qwen3's per-head q/k RMSNorm
            out[f"{norm_name}rope+store_kv {name}"] = (rotary_kv._rotary_store_kv_kernel, (
                slots, slots, qv, k, v, t, kc, kc, cache, w, w, 1e-6, qv.stride(0), qv.stride(1), k.stride(0),
                k.stride(1), v.stride(0), v.stride(1), cache.stride(0)),
                dict(HAS_NORM=has_norm, NUM_Q_HEADS=hq, NUM_KV_HEADS=hkv, HALF=d // 2,
                     BLOCK_HQ=rotary_kv.heads_per_program(hq, has_norm, 1, 132),  # a batch-1 decode step
                     BLOCK_HKV=rotary_kv.heads_per_program(hkv, has_norm, 1, 132), BLOCK_HALF=d // 2, BLOCK_D=d,
                     num_warps=norm.norm_warps(d) if has_norm else 4, **pdl))
    x = torch.empty(64, 5120, dtype=bf16)
    w = torch.empty(5120, dtype=bf16)
    out["rms_norm+residual 5120"] = (norm._rms_norm_kernel, (x, x, w, x, x, 1e-6, x.stride(0), x.stride(0)),
                                     dict(N=5120, BLOCK=8192, HAS_RESIDUAL=True, num_warps=norm.norm_warps(5120)))
    g = torch.empty(64, 2 * 27648, dtype=bf16)
    out["silu_and_mul 27648"] = (activation._silu_and_mul_kernel, (g, x, g.stride(0)),
                                 dict(N=27648, BLOCK=1024, num_warps=4, **pdl))
    for (n, k, prologue), config in row_gemv.ROW_CONFIGS.items():  # the one-token projections the engine takes
        name = {1024: "qwen3-0.6b", 3584: "qwen2.5-7b"}.get(min(n, k), f"{n}x{k}")
        w, xr, y = torch.empty(n, k, dtype=bf16), torch.empty(1, 2 * k, dtype=bf16), torch.empty(1, n, dtype=bf16)
        part, count = torch.empty(row_gemv.MAX_SPLIT_K * row_gemv.MAX_SPLIT_N), torch.empty(n, dtype=i32)
        kw = dict(config)
        split = kw.pop("SPLIT_K")
        pro = row_gemv.PROLOGUES.index(prologue)
        out[f"row_gemv {name} {n}x{k} {prologue}"] = (row_gemv._row_gemv_kernel, (
            xr, xr, w, w, w, y, y, part, count, 1e-6, n, k, k // split),
            dict(SPLIT_K=split, PROLOGUE=pro, HAS_RESIDUAL=pro == row_gemv.NORM, HAS_BIAS=n == 4608, **pdl, **kw))
    logits = torch.empty(64, 151936)
    temps = torch.empty(64)
    best, idx = torch.empty(64, 38), torch.empty(64, 38, dtype=torch.int64)
    seed = torch.empty(1, dtype=torch.int64)
    out["sample filtered"] = (sampler._race_kernel, (
        logits, temps, temps, seed, best, idx, 151936, logits.stride(0), 38),
        dict(CHUNK=sampler.CHUNK, BLOCK=1024, RANDOM=True, FILTERED=True, num_warps=4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--only", default="", help="compile only kernels whose name contains this")
    args = parser.parse_args()
    report = {}
    for name, (fn, call_args, kwargs) in cases().items():
        if args.only in name:
            report[name] = compile_sm90(fn, call_args, kwargs)
            r = report[name]
            print(f"{name:32s} regs {r['registers']:3d} local {r['local']:4d} smem {r['shared']:6d}  {r['ops']}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
