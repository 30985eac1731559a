"""benchmarks/ab_ratios.py lines up the figures of a base and a new run of benchmarks/gpu_ab.sh."""
import json
from pathlib import Path

from benchmarks.ab_ratios import compare


def bench(decode: float, step_ms: float, prefix_ratio: float) -> dict:
    return {"copy_bandwidth_tb_s": 4.17,
            "decode_batch1": [{"shape": "qwen2.5-7b", "decode_tokens_per_s": decode}],
            "profile": [{"shape": "qwen2.5-7b", "batch": 64, "context": 1100, "async_scheduling": False,
                         "ms_per_step": step_ms, "gpu_kernel_ms_per_step": 5.7}],
            "prefix_sharing": {"shape": "qwen3-0.6b", "ttft_p50_ratio": prefix_ratio,
                               "with_cache": {"ttft_p50_s": 0.07}}}


def summary(folder: Path, tps: float) -> None:
    (folder / "20261202-000000-gpu-7b").mkdir(parents=True)
    row = {"backend": "engine-bf16", "level": "c=64", "output_throughput": tps, "ttft_s": {"p50": 1.2},
           "itl_s": {"p50": 0.011}}
    (folder / "20261202-000000-gpu-7b" / "summary.json").write_text(json.dumps([row]))


def test_ratios_are_new_over_base_for_shared_figures(tmp_path: Path) -> None:
    (tmp_path / "base.json").write_text(json.dumps(bench(200.0, 7.6, 4.0)))
    new = bench(250.0, 5.7, 8.0)
    new["offline_throughput"] = {"shape": "qwen3-0.6b", "output_tokens_per_s": 20000.0}  # base lacks it
    (tmp_path / "new.json").write_text(json.dumps(new))
    summary(tmp_path / "serve-base", 3300.0)
    summary(tmp_path / "serve-new", 4950.0)
    got = compare(tmp_path)
    assert got["decode_batch1/qwen2.5-7b/tokens_per_s"] == {"base": 200.0, "new": 250.0, "new_over_base": 1.25}
    assert got["step/qwen2.5-7b/b64/ctx1100/ms"]["new_over_base"] == 0.75
    assert got["step/qwen2.5-7b/b64/ctx1100/gpu_kernel_ms"]["new_over_base"] == 1.0
    assert got["prefix/qwen3-0.6b/ttft_p50_ratio"]["new_over_base"] == 2.0
    assert got["serve/engine-bf16/c=64/output_tokens_per_s"]["new_over_base"] == 1.5
    assert not any(k.startswith("offline/") for k in got)


def test_serving_rounds_compare_by_median_and_list_every_round(tmp_path: Path) -> None:
    for side, values in (("serve-base", (4780.0, 4864.0, 4700.0)), ("serve-new", (4947.0, 5006.0, 3670.0))):
        for i, tps in enumerate(values):
            folder = tmp_path / side / f"20261202-00000{i}-gpu-7b"
            folder.mkdir(parents=True)
            row = {"backend": "engine-bf16", "level": "c=64", "output_throughput": tps, "ttft_s": {"p50": 1.1},
                   "itl_s": {"p50": 0.0059}}
            (folder / "summary.json").write_text(json.dumps([row]))
    got = compare(tmp_path)["serve/engine-bf16/c=64/output_tokens_per_s"]
    assert got["base"] == 4780.0 and got["new"] == 4947.0 and got["new_over_base"] == round(4947 / 4780, 3)
    assert got["base_runs"] == [4780.0, 4864.0, 4700.0] and got["new_runs"] == [4947.0, 5006.0, 3670.0]
