"""The small-batch fused projections (engine.kernels.gemv) against float64 references, and the decoder with them on.

Without CUDA the kernels run in Triton's interpreter, as in tests/test_kernels.py. The references round where the
kernels round (norm, SiLU*mul, output) and as they round: the interpreter truncates fp32 -> bf16 where a GPU rounds
to nearest, so `_round` truncates too when interpreting. Outputs then agree to the last bit except where fp32
accumulation order flips a rounding; a wrong rounding order, a missing residual or norm weight changes most of them.
"""

import pytest
import torch

from tests.triton_interpreter import (HAS_CUDA, interpreter_for_module, kernel_module, round_like_kernels,
                                      skip_module_if_triton_came_first)

skip_module_if_triton_came_first()
pytest.importorskip("triton")

from engine import attention as ref  # noqa: E402
from tests.kernel_launches import record_launches  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BF16, F32 = torch.bfloat16, torch.float32
EPS = 1e-6


interpreter_only_here = pytest.fixture(autouse=True, scope="module")(interpreter_for_module)


@pytest.fixture
def G():
    """engine.kernels.gemv as the model layers will import it during this test (another module may have dropped
    the kernels from sys.modules since collection)."""
    return kernel_module("engine.kernels.gemv")


def _randn(*shape: int, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=DEVICE)




def _norm_ref(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    s = x if residual is None else round_like_kernels(x.float() + residual.float(), x.dtype)
    h = s.float()
    inv_rms = 1.0 / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    normed = round_like_kernels(h * inv_rms, x.dtype)
    return round_like_kernels(normed.float() * norm_weight.float(), x.dtype), s


def _silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, -1)
    silu = round_like_kernels(gate / (1.0 + torch.exp(-gate)), gate_up.dtype)
    return round_like_kernels(silu.float() * up, gate_up.dtype)


def _linear_ref(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = a.double() @ weight.double().T
    return y if bias is None else y + bias.double()


def assert_matches(out: torch.Tensor, want: torch.Tensor) -> None:
    """out (the kernel's, in its dtype) against a float64 reference: bf16 to within one ulp with at most 2% of the
    elements off the correctly rounded value; fp32 to 1e-5 relative (its rounding order is invisible)."""
    assert out.dtype in (BF16, F32) and out.shape == want.shape and torch.isfinite(out).all()
    err = (out.double() - want).abs()
    if out.dtype == F32:
        assert (err.norm() / want.norm()).item() <= 1e-5
        return
    expected = round_like_kernels(want, BF16)
    ulp = torch.ldexp(torch.ones_like(want), torch.frexp(expected.double()).exponent - 8)
    assert (err <= ulp + 1e-6 * want.abs().max()).all(), f"off by {(err / ulp).max().item():.2f} ulp"
    assert (out != expected).double().mean().item() <= 0.02, f"{(out != expected).double().mean().item():.1%} differ"


CASES = [(m, residual, bias) for m in (1, 3, 16) for residual, bias in ((False, False), (True, False), (True, True))]
CONFIGS = [None, {"BLOCK_N": 32, "BLOCK_K": 32}]  # the heuristic's (one K tile here), and several K tiles with tails


@pytest.mark.parametrize("config", CONFIGS, ids=["heuristic", "bn32-bk32"])
@pytest.mark.parametrize("dtype", [BF16, F32], ids=str)
@pytest.mark.parametrize("m,residual,bias", CASES)
def test_norm_gemv_matches_reference(G, dtype, m, residual, bias, config):
    gen = torch.Generator().manual_seed(m + 10 * residual + 100 * bias)
    n, k = 70, 100
    x, r = _randn(m, k, dtype=dtype, gen=gen, scale=3), _randn(m, k, dtype=dtype, gen=gen)
    norm_w, w = 1 + _randn(k, dtype=dtype, gen=gen, scale=0.5), _randn(n, k, dtype=dtype, gen=gen, scale=0.1)
    b = _randn(n, dtype=dtype, gen=gen) if bias else None
    y, new_residual = G.norm_gemv(x, r if residual else None, norm_w, EPS, w, b, config=config)
    h, s = _norm_ref(x, r if residual else None, norm_w)
    assert_matches(y, _linear_ref(h, w, b))
    if residual:
        assert torch.equal(new_residual, s)
        if HAS_CUDA or dtype != BF16:
            assert torch.equal(new_residual, x + r)
    else:
        assert new_residual is x


@pytest.mark.parametrize("config", CONFIGS, ids=["heuristic", "bn32-bk32"])
@pytest.mark.parametrize("dtype", [BF16, F32], ids=str)
@pytest.mark.parametrize("m,bias", [(1, False), (3, True), (16, False), (16, True)])
def test_gemv_and_silu_mul_gemv_match_reference(G, dtype, m, bias, config):
    gen = torch.Generator().manual_seed(m + 100 * bias)
    n, k = 45, 136
    x, w = _randn(m, k, dtype=dtype, gen=gen), _randn(n, k, dtype=dtype, gen=gen, scale=0.1)
    b = _randn(n, dtype=dtype, gen=gen) if bias else None
    assert_matches(G.gemv(x, w, b, config=config), _linear_ref(x, w, b))
    gate_up = _randn(m, 2 * k, dtype=dtype, gen=gen, scale=3)
    assert_matches(G.silu_mul_gemv(gate_up, w, config=config), _linear_ref(_silu_mul_ref(gate_up), w, None))


def test_qwen3_06b_shapes(G):
    """The real QKV (norm + residual, 16 rows) and down_proj (SiLU*mul, one row) of Qwen3-0.6B, bf16."""
    gen = torch.Generator().manual_seed(6)
    x, r = _randn(16, 1024, dtype=BF16, gen=gen), _randn(16, 1024, dtype=BF16, gen=gen)
    norm_w, w_qkv = 1 + _randn(1024, dtype=BF16, gen=gen, scale=0.5), _randn(4096, 1024, dtype=BF16, gen=gen)
    y, new_residual = G.norm_gemv(x, r, norm_w, EPS, w_qkv)
    h, s = _norm_ref(x, r, norm_w)
    assert_matches(y, _linear_ref(h, w_qkv, None))
    assert torch.equal(new_residual, s)
    gate_up, w_down = _randn(1, 2 * 3072, dtype=BF16, gen=gen, scale=3), _randn(1024, 3072, dtype=BF16, gen=gen)
    assert_matches(G.silu_mul_gemv(gate_up, w_down), _linear_ref(_silu_mul_ref(gate_up), w_down, None))


def test_block_sizes_for_an_h200(G):
    """132 SMs: the widest BLOCK_N that gives every SM two programs, about 8 KB of weight per K step."""
    config = {name: G.gemv_config(n, k, 2, 132) for name, (n, k) in {
        "0.6b qkv": (4096, 1024), "0.6b down": (1024, 3072), "7b o": (3584, 3584), "7b gate_up": (37888, 3584),
        "32b qkv": (7168, 5120), "32b gate_up": (55296, 5120)}.items()}
    assert {name: (c["BLOCK_N"], c["BLOCK_K"]) for name, c in config.items()} == {
        "0.6b qkv": (16, 256), "0.6b down": (16, 256), "7b o": (16, 256), "7b gate_up": (64, 64),
        "32b qkv": (16, 256), "32b gate_up": (64, 64)}
    assert G.gemv_config(70, 20, 4, 132) == {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}


def test_policy_and_switch(G, monkeypatch):
    # By default only where the H200 measured a gain: the plain product of a <= 4 MiB matrix at up to 4 rows.
    assert G.fused_gemv_enabled(1, 1024, 2048, BF16) and G.fused_gemv_enabled(4, 1024, 2048, BF16)
    assert not G.fused_gemv_enabled(8, 1024, 2048, BF16) and not G.fused_gemv_enabled(0, 1024, 2048, BF16)
    assert not G.fused_gemv_enabled(1, 4096, 1024, BF16), "0.6B's qkv (8 MiB) was slower fused"
    assert not G.fused_gemv_enabled(1, 1024, 2048, BF16, "norm") and not G.fused_gemv_enabled(1, 1024, 3072, BF16, "silu_mul")
    assert not G.fused_gemv_enabled(1, 55296, 5120, BF16), "the 32B gate/up matrix stays with cuBLAS by default"
    monkeypatch.setattr(G, "FORCE", True)
    assert G.fused_gemv_enabled(1, 55296, 5120, BF16) and not G.fused_gemv_enabled(17, 64, 64, BF16)
    monkeypatch.setattr(G, "FORCE", False)
    assert not G.fused_gemv_enabled(1, 64, 64, BF16)
    for value, want in (("0", False), ("1", True), ("", None), ("auto", None)):
        monkeypatch.setenv("PAGEBENCH_FUSED_GEMV", value)
        assert G.env_switch("PAGEBENCH_FUSED_GEMV") is want
    monkeypatch.setenv("PAGEBENCH_FUSED_GEMV", "yes")
    with pytest.raises(ValueError, match="PAGEBENCH_FUSED_GEMV"):
        G.env_switch("PAGEBENCH_FUSED_GEMV")


def test_bad_inputs_name_the_problem(G):
    w = torch.zeros(8, 32, dtype=BF16, device=DEVICE)
    with pytest.raises(ValueError, match="at most 16"):
        G.gemv(torch.zeros(17, 32, dtype=BF16, device=DEVICE), w)
    with pytest.raises(ValueError, match="last dim must be 64"):
        G.silu_mul_gemv(torch.zeros(2, 32, dtype=BF16, device=DEVICE), w)
    with pytest.raises(ValueError, match="does not fit"):
        G.gemv(torch.zeros(2, 32, dtype=F32, device=DEVICE), w)
    with pytest.raises(ValueError, match="residual"):
        G.norm_gemv(torch.zeros(2, 32, dtype=BF16, device=DEVICE), torch.zeros(3, 32, dtype=BF16, device=DEVICE),
                    torch.ones(32, dtype=BF16, device=DEVICE), EPS, w)


def _tiny_model(arch: str, dtype: torch.dtype) -> torch.nn.Module:
    """tests/tiny_models.py's sizes (Qwen2: QKV bias, head_dim 16; Qwen3: q/k norm, head_dim 32 != hidden / heads),
    with its initializer range of 0.2 so that logits are far apart."""
    from engine.config import ModelConfig
    from engine.loader import build_model

    qwen3 = arch == "Qwen3ForCausalLM"
    config = ModelConfig(architecture=arch, vocab_size=512, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32 if qwen3 else 16, max_position_embeddings=512, rms_norm_eps=EPS,
                         rope_theta=1e4, attention_bias=not qwen3, qk_norm=qwen3)
    model = build_model(config, dtype, DEVICE)
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen)
        param.data = (1 + noise / 4 if name.endswith("norm.weight") else noise / 5).to(dtype=dtype, device=DEVICE)
    for layer in model.modules():
        if hasattr(layer, "k_cache"):
            layer.k_cache = torch.zeros(8, 16, 2, config.head_dim, dtype=dtype, device=DEVICE)
            layer.v_cache = torch.zeros_like(layer.k_cache)
            layer.backend = ref.get_backend(DEVICE)
    return model


def _greedy(model: torch.nn.Module, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """Prefills the prompts in one step, then decodes `steps` tokens each (batch = len(prompts)); returns the tokens
    and every step's logits."""
    i32 = dict(dtype=torch.int32, device=DEVICE)
    tables = torch.arange(2 * len(prompts), **i32).view(len(prompts), 2)
    lens = [len(p) for p in prompts]
    slots = [s * 32 + t for s, n in enumerate(lens) for t in range(n)]
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], **i32)
    meta = ref.AttentionMetadata(torch.tensor(slots, device=DEVICE), tables, torch.tensor(lens, **i32), starts, 0, 0,
                                 max(lens), max(lens))
    ids = torch.tensor([t for p in prompts for t in p], device=DEVICE)
    positions = torch.tensor([t for n in lens for t in range(n)], device=DEVICE)
    tokens, logits = [[] for _ in prompts], []
    with torch.inference_mode():
        for step in range(steps + 1):
            hidden = model(ids, positions, meta)
            last = model.compute_logits(hidden[starts[1:].long() - 1] if step == 0 else hidden).float()
            logits.append(last)
            ids = last.argmax(-1)
            for seq, token in zip(tokens, ids.tolist()):
                seq.append(token)
            positions = torch.tensor(lens, device=DEVICE) + step
            b = len(prompts)
            meta = ref.AttentionMetadata(torch.arange(b, device=DEVICE) * 32 + positions, tables,
                                         (positions + 1).to(torch.int32), torch.arange(b + 1, **i32), b, b, 1,
                                         int(positions.max()) + 1)
    return tokens, torch.stack(logits[1:])


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize("prompts", [[[11, 12, 13, 14, 15]], [[11, 12, 13, 14, 15], [21, 22, 23]]], ids=["B1", "B2"])
def test_decoder_with_fused_gemv_matches_unfused(G, monkeypatch, arch, prompts):
    """Forced on, every layer launches four fused kernels a step (the norms inside QKV and gate/up, o_proj, SiLU*mul
    inside down_proj) and decodes the same greedy tokens as forced off. In fp32 the logits agree to rounding; in
    bf16 both paths sit about 2% from the fp32 model (this tiny model's bf16 noise), the fused one no further.
    The default leaves CPU steps on torch."""
    launches = record_launches(monkeypatch, G, "_gemv_kernel", "PROLOGUE")
    models = {BF16: _tiny_model(arch, BF16), F32: _tiny_model(arch, F32)}
    for fp32, bf16 in zip(models[F32].parameters(), models[BF16].parameters()):
        fp32.data = bf16.data.float()  # one set of weights, so that fp32 is the bf16 model's reference
    runs = {}
    for force in (None, False, True):
        monkeypatch.setattr(G, "FORCE", force)
        for dtype, model in models.items():
            launches.clear()
            runs[force, dtype] = _greedy(model, prompts, steps=3)
            if force is True:
                assert launches == [G.NORM, G.PLAIN, G.NORM, G.SILU_MUL] * 2 * 4, "2 layers x (prefill + 3 steps)"
            elif not HAS_CUDA:
                assert launches == [], "the CPU path stays on torch unless the kernels are forced on"
    tokens = [run[0] for run in runs.values()]
    assert all(t == tokens[0] for t in tokens), f"greedy tokens differ: {tokens}"

    def err(force: bool | None, dtype: torch.dtype) -> float:
        want = runs[False, F32][1]
        return ((runs[force, dtype][1] - want).norm() / want.norm()).item()

    assert err(True, F32) <= 1e-5
    assert err(True, BF16) <= max(1.5 * err(False, BF16), 1e-3)
    if not HAS_CUDA:
        assert all(torch.equal(runs[None, d][1], runs[False, d][1]) for d in models)
