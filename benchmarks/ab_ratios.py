"""New over base for every figure two runs of benchmarks/gpu_ab.sh both have; prints JSON.

    python benchmarks/ab_ratios.py OUT_DIR      # reads OUT_DIR/{base,new}.json and OUT_DIR/serve-{base,new}/*/summary.json
                                                # (one run folder per round: serving figures are medians)
"""
import json
import statistics
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


def serve_runs(folder: Path) -> dict[str, list[float]]:
    """Every serving run's figures under folder (one run folder per round), in run order."""
    out: dict[str, list[float]] = {}
    for summary in sorted(folder.glob("*/summary.json")):
        for row in json.loads(summary.read_text()):
            key = f"serve/{row['backend']}/{row['level']}"
            out.setdefault(f"{key}/output_tokens_per_s", []).append(row["output_throughput"])
            out.setdefault(f"{key}/ttft_p50_s", []).append(row["ttft_s"]["p50"])
            out.setdefault(f"{key}/itl_p50_s", []).append(row["itl_s"]["p50"])
    return out


def compare(out_dir: Path) -> dict[str, dict]:
    """new over base for every figure both sides have; serving figures are the median of the rounds, each round's
    value listed beside it."""
    base, new = bench_figures(out_dir / "base.json"), bench_figures(out_dir / "new.json")
    base_runs, new_runs = serve_runs(out_dir / "serve-base"), serve_runs(out_dir / "serve-new")
    base.update({k: statistics.median(v) for k, v in base_runs.items()})
    new.update({k: statistics.median(v) for k, v in new_runs.items()})
    out: dict[str, dict] = {}
    for k in sorted(base.keys() & new.keys()):
        out[k] = {"base": base[k], "new": new[k], "new_over_base": round(new[k] / base[k], 3) if base[k] else None}
        if len(base_runs.get(k, [])) > 1 or len(new_runs.get(k, [])) > 1:
            out[k] |= {"base_runs": base_runs[k], "new_runs": new_runs[k]}
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(compare(Path(sys.argv[1])), indent=1))
