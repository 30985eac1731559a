"""The GQA-packed extend kernel (engine.kernels.extend_attention._extend_packed_kernel) against engine.attention's
PyTorch reference, and paged_extend's choice between it and the per-head kernel.

Without CUDA the kernels run in Triton's interpreter, as in tests/test_kernels.py. Outputs start as NaN, unused cache
slots and block-table padding point at NaN K/V, so an unwritten row or a read past a sequence fails.
"""
import math
import sys
from types import ModuleType

import pytest
import torch

from tests.triton_interpreter import HAS_CUDA, interpreter_for_module, kernel_module, skip_module_if_triton_came_first

skip_module_if_triton_came_first()
pytest.importorskip("triton")

from engine import attention as ref  # noqa: E402
from tests.kernel_launches import record_launches  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
PREFIXES, QUERY_LENS = (0, 17, 100), (1, 5, 32, 64)
# (q heads, kv heads): group 1, 2, 4, and the groups of Qwen2.5-7B (28/4) and Qwen2.5-32B (40/8) on fewer heads.
HEADS = {1: (2, 2), 2: (4, 2), 4: (8, 2), 7: (7, 1), 5: (10, 2)}


interpreter_only_here = pytest.fixture(autouse=True, scope="module")(interpreter_for_module)


@pytest.fixture
def E() -> ModuleType:
    """engine.kernels.extend_attention as loaded now (another test module may have dropped the kernels since)."""
    return kernel_module("engine.kernels.extend_attention")


@pytest.fixture
def launches(monkeypatch, E) -> dict[str, list]:
    return {"packed": record_launches(monkeypatch, E, "_extend_packed_kernel", "BLOCK_M"),
            "per_head": record_launches(monkeypatch, E, "_extend_kernel", "BLOCK_M")}


def check_extend(E: ModuleType, prefixes: list[int], query_lens: list[int], heads: int, kv_heads: int,
                 dtype: torch.dtype, seed: int, head_dim: int = 32, block_size: int = 16, extra_heads: int = 0,
                 config: dict | None = None) -> None:
    """paged_extend against the reference for one batch of ragged sequences. extra_heads > 0 makes q a view of a
    wider qkv-like tensor (token stride above heads x head_dim) and out a slice of a larger buffer, as
    attend_to_cache's mixed steps and the CUDA-graph pieces pass them."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefixes, query_lens)]
    need = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(need) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    v_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    nan_block = ids.pop()
    tables = torch.full((len(seq_lens), max(need) + 2), nan_block, dtype=torch.int32)
    for s, (n, blocks) in enumerate(zip(seq_lens, need)):
        tables[s, :blocks] = torch.tensor(ids[:blocks], dtype=torch.int32)
        ids = ids[blocks:]
        pos = torch.arange(n)
        slots = (tables[s].long()[pos // block_size] * block_size + pos % block_size).to(DEVICE)
        for cache in (k_cache, v_cache):
            values = torch.randn(n, kv_heads, head_dim, generator=gen)
            cache.view(-1, kv_heads, head_dim)[slots] = values.to(dtype=dtype, device=DEVICE)
    tables = tables.to(DEVICE)

    tokens = sum(query_lens)
    q = torch.randn(tokens, heads + extra_heads, head_dim, generator=gen).to(dtype=dtype, device=DEVICE)[:, :heads]
    out = torch.full((tokens + extra_heads, heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)[extra_heads:]
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, tables, starts, lens, max(query_lens), head_dim ** -0.5)
    got = E.paged_extend(*args, out=out, config=config)
    assert got.data_ptr() == out.data_ptr() and torch.isfinite(out).all(), "unwritten or NaN-contaminated output"
    expected = ref.paged_extend(*args)
    err = ((out.double() - expected.double()).norm() / expected.double().norm()).item()
    assert err <= TOL[dtype], f"rel err {err:.2e}"


def all_lengths(group: int) -> tuple[list[int], list[int]]:
    """Every prefix with every query length, ragged in one call, order varied by group."""
    pairs = [(p, n) for p in PREFIXES for n in QUERY_LENS]
    pairs = pairs[group % len(pairs):] + pairs[:group % len(pairs)]
    return [p for p, _ in pairs], [n for _, n in pairs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("group", list(HEADS))
def test_extend_matches_reference_by_group(E, launches, dtype, group):
    heads, kv_heads = HEADS[group]
    check_extend(E, *all_lengths(group), heads, kv_heads, dtype, seed=group)
    kernel = "per_head" if group == 1 else "packed"
    assert len(launches[kernel]) == 1 and sum(map(len, launches.values())) == 1, launches


@pytest.mark.parametrize("group", [2, 7])
def test_packed_is_dispatched_for_a_short_query_and_writes_strided_out(E, launches, group):
    heads, kv_heads = HEADS[group]
    check_extend(E, [100, 17], [32, 1], heads, kv_heads, torch.bfloat16, seed=10 + group, extra_heads=3)
    assert len(launches["packed"]) == 1 and launches["per_head"] == []


def test_dispatch_switches_at_the_threshold(E, launches):
    """One new token past PACKED_MAX_QUERY_LEN in the step and the per-head kernel takes every sequence."""
    heads, kv_heads = HEADS[4]
    limit = E.PACKED_MAX_QUERY_LEN
    check_extend(E, [17, 0], [limit, 5], heads, kv_heads, torch.bfloat16, seed=20)
    check_extend(E, [17, 0], [limit + 1, 5], heads, kv_heads, torch.bfloat16, seed=21)
    assert (len(launches["packed"]), len(launches["per_head"])) == (1, 1)


@pytest.mark.parametrize("config", [{"BLOCK_M": 64, "BLOCK_N": 64}, {"BLOCK_M": 32, "BLOCK_N": 32}], ids=str)
def test_packed_with_gpu_tile_sizes(E, launches, config):
    """The H200's 64-row, 64-key tiles (a tile spans 64 / group tokens, the diagonal sweep starts mid-block)."""
    heads, kv_heads = HEADS[7]
    check_extend(E, [0, 100, 17, 70], [64, 32, 5, 1], heads, kv_heads, torch.bfloat16, seed=30, head_dim=64,
                 config=config)
    assert launches["packed"] == [config["BLOCK_M"]]


@pytest.mark.slow
def test_packed_compiles_for_hopper_without_spills(tmp_path):
    """sm_90 through triton's own ptxas, no GPU needed: wgmma dots, 16-byte async K/V copies, no local memory."""
    import json
    import subprocess
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("triton's NVIDIA tools are not installed")
    report_path = tmp_path / "sm90.json"
    subprocess.run([sys.executable, "benchmarks/kernels_sm90.py", "--only", "extend packed", "--json",
                    str(report_path)], cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True)
    report = json.loads(report_path.read_text())
    assert len(report) == 3
    for name, r in report.items():
        assert r["local"] == 0 and r["stack"] == 0 and not r["ops"].get("LDL"), f"{name} spills to local memory"
        assert r["ops"].get("LDGSTS.E.BYPASS.128"), f"{name} does not stream K/V with 16-byte async copies"
        assert any(op.startswith("HGMMA") for op in r["ops"]), f"{name} does not use wgmma"


def _specialization(fn, *args, **kwargs) -> str:
    """The key triton's JIT binder gives these arguments for sm_90 (as in tests/test_kernels.py): equal keys share
    one compiled variant."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if not isinstance(fn, triton.runtime.JITFunction):  # the interpreter's wrapper keeps the decorator's arguments
        fn = triton.runtime.JITFunction(fn.fn, **fn.kwargs)
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
    return str(binder(*args, **kwargs)[1])


def test_packed_compiles_once_whatever_a_steps_make_up(E):
    """Block-table width and the offsets of a mixed step's extend half vary from step to step: one variant for all."""
    q = torch.empty(64, 28, 128, dtype=torch.bfloat16)
    cache = torch.empty(100, 16, 4, 128, dtype=torch.bfloat16)

    def key(decodes: int, width: int) -> str:
        tables = torch.zeros(decodes + 5, width, dtype=torch.int32)[decodes:]
        starts = torch.zeros(decodes + 6, dtype=torch.int32)[decodes:]
        lens = torch.zeros(decodes + 5, dtype=torch.int32)[decodes:]
        return _specialization(
            E._extend_packed_kernel, q, cache, cache, q, tables, starts, lens, 0.1, q.stride(0), q.stride(1),
            q.stride(0), q.stride(1), tables.stride(0), NUM_HEADS=28, NUM_KV_HEADS=4, HEAD_DIM=128, BLOCK_SIZE=16,
            BLOCK_D=128, BLOCK_M=64, BLOCK_N=64, UPCAST=False, PRECISION="ieee", num_warps=4, num_stages=3)

    assert len({key(d, w) for d, w in [(0, 1), (1, 16), (1, 17), (3, 64), (2, 66), (16, 80), (4, 64)]}) == 1
