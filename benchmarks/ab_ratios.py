"""New over base for every figure two runs of benchmarks/gpu_ab.sh both have; prints JSON.

    python benchmarks/ab_ratios.py OUT_DIR      # reads OUT_DIR/{base,new}.json and OUT_DIR/serve-{base,new}/*/summary.json
"""
import json
import sys
from pathlib import Path


def bench_figures(path: Path) -> dict[str, float]:
    """The figures of one gpu_bench.py JSON, named so that both sides line up."""
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    out: dict[str, float] = {}
    for d in r.get("decode_batch1", []):
        out[f"decode_batch1/{d['shape']}/tokens_per_s"] = d["decode_tokens_per_s"]
    if t := r.get("offline_throughput"):
        out[f"offline/{t['shape']}/tokens_per_s"] = t["output_tokens_per_s"]
    if p := r.get("prefix_sharing"):
        out[f"prefix/{p['shape']}/ttft_p50_ratio"] = p["ttft_p50_ratio"]
        out[f"prefix/{p['shape']}/ttft_p50_s_with_cache"] = p["with_cache"]["ttft_p50_s"]
    for p in r.get("profile", []):
        key = f"step/{p['shape']}/b{p['batch']}/ctx{p['context']}{'/async' if p.get('async_scheduling') else ''}"
        if "ms_per_step" in p:
            out[f"{key}/ms"] = p["ms_per_step"]
        out[f"{key}/gpu_kernel_ms"] = p["gpu_kernel_ms_per_step"]
    for p in r.get("prefill", []):
        out[f"prefill/{p['shape']}/chunk{p['chunk_tokens']}/fraction_of_gemm_peak"] = p["fraction_of_gemm_peak"]
    for k in ("copy_bandwidth_tb_s", "gemm_peak_tflops"):
        if k in r:
            out[f"card/{k}"] = r[k]
    return out


def serve_figures(folder: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for summary in sorted(folder.glob("*/summary.json")):
        for row in json.loads(summary.read_text()):
            key = f"serve/{row['backend']}/{row['level']}"
            out[f"{key}/output_tokens_per_s"] = row["output_throughput"]
            out[f"{key}/ttft_p50_s"] = row["ttft_s"]["p50"]
            out[f"{key}/itl_p50_s"] = row["itl_s"]["p50"]
    return out


def compare(out_dir: Path) -> dict[str, dict[str, float]]:
    base = {**bench_figures(out_dir / "base.json"), **serve_figures(out_dir / "serve-base")}
    new = {**bench_figures(out_dir / "new.json"), **serve_figures(out_dir / "serve-new")}
    return {k: {"base": base[k], "new": new[k], "new_over_base": round(new[k] / base[k], 3) if base[k] else None}
            for k in sorted(base.keys() & new.keys())}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(compare(Path(sys.argv[1])), indent=1))
