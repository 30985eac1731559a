"""The one-token projections (engine.kernels.row_gemv) against float64 references, split and unsplit, and the choice
engine.kernels.gemv makes between them and today's launches. Without CUDA the kernels run in Triton's interpreter;
with it the real shapes of Qwen2.5-7B and Qwen3-0.6B run at full size."""

import json

import pytest
import torch

from tests.triton_interpreter import (HAS_CUDA, interpreter_for_module, kernel_module, round_like_kernels,
                                      skip_module_if_triton_came_first)

skip_module_if_triton_came_first()
pytest.importorskip("triton")

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BF16, F32 = torch.bfloat16, torch.float32
EPS = 1e-6

interpreter_only_here = pytest.fixture(autouse=True, scope="module")(interpreter_for_module)


@pytest.fixture
def R():
    return kernel_module("engine.kernels.row_gemv")


@pytest.fixture
def G():
    return kernel_module("engine.kernels.gemv")


def _inputs(prologue: int, n: int, k: int, dtype: torch.dtype, bias: bool, residual: bool, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=DEVICE)

    return {"x": randn(1, 2 * k if prologue == 2 else k, scale=2), "weight": randn(n, k, scale=k**-0.5),
            "bias": randn(n) if bias else None, "residual": randn(1, k) if residual else None,
            "norm_weight": 1 + randn(k, scale=0.25) if prologue == 1 else None}




def _reference(prologue: int, t: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float64 math on the kernel's inputs; the residual sum rounded to the dtype, as the kernel stores it."""
    x, summed = t["x"].double(), None
    if prologue == 1:
        if t["residual"] is not None:
            summed = round_like_kernels(t["x"].float() + t["residual"].float(), t["x"].dtype)
            x = summed.double()
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * t["norm_weight"].double()
    elif prologue == 2:
        gate, up = t["x"].float().chunk(2, -1)  # rounded where silu_and_mul rounds
        silu = round_like_kernels(gate / (1 + torch.exp(-gate)), t["x"].dtype)
        x = round_like_kernels(silu.float() * up, t["x"].dtype).double()
    y = x @ t["weight"].double().T
    return (y if t["bias"] is None else y + t["bias"].double()), summed


def _check(R, prologue: int, t: dict, config: dict, tolerance: float) -> None:
    want, summed = _reference(prologue, t)
    for _ in range(2):  # the second launch finds the split counters the first one left
        y, new_residual = R.row_gemv(prologue, t["x"], t["weight"], t["bias"], t["residual"], t["norm_weight"], EPS,
                                     config)
        assert y.shape == want.shape and y.dtype == t["x"].dtype
        err = ((y.double() - want).abs().max() / want.abs().max()).item()
        assert err <= tolerance, f"relative error {err:.2e}"
        if summed is None:
            assert new_residual is None
        else:
            assert torch.equal(new_residual, summed)
    if config["SPLIT_K"] > 1:
        assert not R.workspace(t["x"].device)[1].any(), "a split launch left its arrival counters set"


CASES = [  # prologue, n, k, bias, residual, BLOCK_N, BLOCK_K, SPLIT_K: tails in N, K and the splits' K ranges
    (0, 70, 200, False, False, 16, 64, 1), (0, 70, 200, True, False, 8, 32, 4), (0, 33, 96, False, False, 16, 32, 8),
    (1, 70, 200, False, True, 16, 64, 1), (1, 45, 100, True, True, 4, 128, 1), (1, 20, 64, False, False, 16, 32, 1),
    (2, 40, 136, False, False, 16, 64, 1), (2, 40, 136, True, False, 8, 32, 2), (2, 24, 300, False, False, 16, 64, 4),
]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("prologue,n,k,bias,residual,block_n,block_k,split", CASES)
def test_row_gemv_matches_reference(R, dtype, prologue, n, k, bias, residual, block_n, block_k, split):
    t = _inputs(prologue, n, k, dtype, bias, residual, seed=n + k + split)
    config = {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split, "num_warps": 4, "num_stages": 2}
    # bf16: the inputs and the output are rounded (one bf16 ulp is 2**-8 of the largest output)
    _check(R, prologue, t, config, 1e-5 if dtype == F32 else 8e-3)


def test_split_refused_where_it_cannot_apply(R):
    t = _inputs(1, 32, 64, F32, False, True, seed=1)
    with pytest.raises(ValueError, match="SPLIT_K=2"):
        R.row_gemv(1, t["x"], t["weight"], None, t["residual"], t["norm_weight"], EPS,
                   {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 2})


def test_default_config_splits_only_short_outputs(R):
    assert R.default_config(37888, 3584, R.NORM, 132)["SPLIT_K"] == 1
    assert R.default_config(3584, 3584, R.NORM, 132)["SPLIT_K"] == 1, "NORM needs the whole row in one program"
    assert R.default_config(3584, 18944, R.SILU_MUL, 132)["SPLIT_K"] == 4  # 224 output blocks, 132 SMs
    assert R.default_config(1024, 1024, R.PLAIN, 132)["SPLIT_K"] == 2
    assert R.default_config(1024, 512, R.PLAIN, 132)["SPLIT_K"] == 1, "K too short to split"


def _sweep_file(tmp_path, today_us: float, best_us: float) -> str:
    path = tmp_path / "sweep.json"
    config = {"BLOCK_N": 8, "BLOCK_K": 512, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}
    path.write_text(json.dumps({"projections": [
        {"N": 4608, "K": 3584, "prologue": "norm", "today_us": today_us, "best": [{"us": best_us, "config": config}]},
        {"N": 3584, "K": 3584, "prologue": "plain", "today_us": 10.0, "best": []}]}))
    return str(path)


def test_table_from_a_sweep_keeps_only_gains(R, tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEBENCH_ROW_GEMV_TABLE", _sweep_file(tmp_path, today_us=12.0, best_us=10.0))
    R.row_configs.cache_clear()
    try:
        monkeypatch.setattr(R, "ROW_CONFIGS", {(1, 2, "plain"): {"BLOCK_N": 4}, (4608, 3584, "norm"): {}})
        R.row_configs.cache_clear()
        assert R.row_configs() == {(1, 2, "plain"): {"BLOCK_N": 4}, (4608, 3584, "norm"): {
            "BLOCK_N": 8, "BLOCK_K": 512, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}}
        monkeypatch.setenv("PAGEBENCH_ROW_GEMV_TABLE", _sweep_file(tmp_path, today_us=12.0, best_us=11.9))
        R.row_configs.cache_clear()
        assert R.row_configs() == {(1, 2, "plain"): {"BLOCK_N": 4}, (4608, 3584, "norm"): {}}, "under 3%: not taken"
    finally:
        R.row_configs.cache_clear()


def test_row_config_switch(R, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("PAGEBENCH_ROW_GEMV_TABLE", raising=False)
    monkeypatch.setattr(R, "ROW_CONFIGS", {(64, 32, "plain"): {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}})
    R.row_configs.cache_clear()
    try:
        monkeypatch.setattr(R, "ROW_FORCE", None)
        assert R.row_config(64, 32, "plain", cpu) is None, "the CPU engine keeps its torch path"
        monkeypatch.setattr(R, "ROW_FORCE", False)
        assert R.row_config(64, 32, "plain", cpu) is None
        monkeypatch.setattr(R, "ROW_FORCE", True)  # on a GPU, or on the CPU under the interpreter (tests)
        assert R.row_config(64, 32, "plain", DEVICE) == {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}
        sms = R.num_sms(DEVICE)
        assert R.row_config(3584, 18944, "silu_mul", DEVICE) == R.default_config(3584, 18944, 2, sms)
    finally:
        R.row_configs.cache_clear()


def test_forced_row_path_through_the_fused_entry_points(G, monkeypatch):
    """gemv / norm_gemv / silu_mul_gemv at one token take the row kernel when it is on, and agree with the
    16-row kernel to bf16 rounding."""
    monkeypatch.setattr(G.row_gemv, "ROW_FORCE", True)
    gen = torch.Generator().manual_seed(3)
    x, r = torch.randn(1, 96, generator=gen).to(BF16), torch.randn(1, 96, generator=gen).to(BF16)
    w, nw = (torch.randn(40, 96, generator=gen) / 10).to(BF16), (1 + torch.randn(96, generator=gen) / 4).to(BF16)
    x, r, w, nw = (t.to(DEVICE) for t in (x, r, w, nw))
    y_row, res_row = G.norm_gemv(x, r, nw, EPS, w)
    y_16, res_16 = G.norm_gemv(x, r, nw, EPS, w, config={"BLOCK_N": 16, "BLOCK_K": 32})
    assert torch.equal(res_row, res_16)
    assert ((y_row.float() - y_16.float()).abs().max() / y_16.float().abs().max()).item() < 2e-2
    gate_up = torch.randn(1, 192, generator=gen).to(BF16).to(DEVICE)
    a, b = G.silu_mul_gemv(gate_up, w), G.silu_mul_gemv(gate_up, w, config={"BLOCK_N": 16, "BLOCK_K": 32})
    assert ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="full-size shapes need a GPU")
@pytest.mark.parametrize("shape", ["qwen2.5-7b", "qwen3-0.6b"])
def test_full_size_projections_on_the_gpu(R, shape):
    """Every projection of the real shapes at one token, with the configuration the engine would pick (the measured
    one, else the default), split or not."""
    hq, hkv, d, hidden, inter, bias = {"qwen2.5-7b": (28, 4, 128, 3584, 18944, True),
                                       "qwen3-0.6b": (16, 8, 128, 1024, 3072, False)}[shape]
    for prologue, n, k, has_bias in ((1, (hq + 2 * hkv) * d, hidden, bias), (0, hidden, hq * d, False),
                                     (1, 2 * inter, hidden, False), (2, hidden, inter, False)):
        t = _inputs(prologue, n, k, BF16, has_bias, prologue == 1, seed=n)
        config = R.row_configs().get((n, k, R.PROLOGUES[prologue])) or R.default_config(n, k, prologue, 132)
        _check(R, prologue, t, config, 8e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="concurrent programs need a GPU")
def test_split_launches_repeat_to_the_bit_on_the_gpu(R):
    """The partial sums are added in split order by whichever program arrives last: 200 launches of Qwen3-0.6B's
    down_proj split 8 ways (512 programs at once) must give the same bits every time, and a wrong arrival count or a
    partial read before it was written would not."""
    t = _inputs(2, 1024, 3072, BF16, False, False, seed=11)
    config = {"BLOCK_N": 16, "BLOCK_K": 256, "SPLIT_K": 8, "num_warps": 8, "num_stages": 2}
    first = R.row_gemv(2, t["x"], t["weight"], None, None, None, EPS, config)[0]
    for _ in range(200):
        assert torch.equal(R.row_gemv(2, t["x"], t["weight"], None, None, None, EPS, config)[0], first)
    _check(R, 2, t, config, 8e-3)
