"""Every user-visible string of the report, in English and in the article's Chinese."""
from __future__ import annotations

import math

LANGS = ("en", "zh")

STRINGS: dict[str, tuple[str, str]] = {
    # table groups, named after the article's headings
    "g_advantage": ("Core advantage", "核心优势"),
    "g_memory": ("Memory management", "显存管理"),
    "g_speed": ("Speed and latency", "速度与延迟"),
    "g_batching": ("Batching", "批处理"),
    "g_hardware": ("Hardware", "硬件需求"),
    "g_deployment": ("Deployment", "部署复杂度"),
    # table rows
    "feature": ("Feature", "特性"),
    "advantage": ("Measured advantage", "实测优势"),
    "peak_memory": ("Peak memory", "峰值显存/内存"),
    "memory_management": ("KV cache and model placement", "KV 缓存与模型放置"),
    "kv_pool": ("KV pool occupancy at peak", "KV 池峰值占用"),
    "kv_utilization": ("KV use: allocated blocks' slots holding tokens, at peak", "KV 利用率：已分配块中存有 token 的槽位（峰值时）"),
    "prompt_cache": ("Prompt tokens from the server's cache", "来自服务端缓存的提示 token"),
    "decode_speed": ("Decode speed per stream (p50)", "单流解码速度（p50）"),
    "aggregate": ("Aggregate output at highest load", "最高负载下总输出速度"),
    "ttft": ("Time to first token (TTFT)", "首 token 延迟（TTFT）"),
    "itl": ("Inter-token latency (ITL)", "token 间延迟（ITL）"),
    "e2e": ("End-to-end latency (E2E)", "端到端延迟（E2E）"),
    "errors": ("Errors", "错误"),
    "scaling": ("Throughput scaling, fewest → most users", "吞吐扩展（最少 → 最多用户）"),
    "batching": ("Batching measured", "实测批处理"),
    "hardware": ("This run's hardware", "本次硬件"),
    "deployment": ("Launch to ready", "启动到就绪"),
    "version": ("Version", "版本"),
    "model": ("Model, precision, quantization", "模型、精度、量化"),
    # cell phrases
    "article": ("article", "原文"),
    "colon": (": ", "："),
    "not_measured": ("not measured", "未测得"),
    "all_failed": ("all {n} requests failed", "{n} 个请求全部失败"),
    "at": (" (at {level})", "（{level} 时）"),
    "weights": ("weights {v}", "权重 {v}"),
    "list_sep": ("; ", "；"),
    "mem_gpu": ("GPU, backend processes", "显存（后端进程）"),
    "mem_gpu_device": ("GPU, whole device", "显存（整卡）"),
    "mem_ollama_vram": ("GPU, Ollama size_vram", "显存（Ollama size_vram）"),
    "mem_ram": ("RAM (CPU-only host)", "内存（无 GPU 主机）"),
    "block_size": ("block size {v} tokens", "块大小 {v} tokens"),
    "kv_blocks": ("{v} KV blocks", "{v} 个 KV 块"),
    "kv_pool_cell": ("{v} of the pool's blocks held", "池中 {v} 的块被占用"),
    "kv_util_cell": ("{v} of the allocated blocks' token slots hold tokens", "已分配块中 {v} 的 token 槽位存有 token"),
    "not_reported": ("not reported by this server", "该服务端未报告"),
    "cache_cell": ("{share} of prompt tokens, {beyond} beyond the chat template", "提示 token 的 {share}，超出聊天模板部分 {beyond}"),
    "cache_cell_no_template": ("{share} of prompt tokens", "提示 token 的 {share}"),
    "cache_shared": ("shared prompts asked for by the scenario: {why}", "场景要求共享提示：{why}"),
    "cache_warn_cell": ("⚠ NOT FRESH PROMPTS at {levels}: above 1% beyond the template", "⚠ {levels} 的提示并非全新：超出模板部分高于 1%"),
    "cache_warning": ("Warning: {backend} at {level} took {beyond} of its prompt tokens from the server's cache beyond the "
                      "chat template ({share} in all), though the scenario asks for no shared prompts. Its latencies and "
                      "throughput are not those of fresh prompts.",
                      "警告：{backend} 在 {level} 有 {beyond} 的提示 token 来自服务端缓存（超出聊天模板部分；合计 {share}），"
                      "而场景并未要求共享提示。其延迟与吞吐并非全新提示下的结果。"),
    "prompts_note": ("Prompts: {how}", "提示：{how}"),
    "prompts_tagged": ("every request of this run had a prompt of its own, starting with a {n}-word tag drawn for this "
                       "run, so no server cache could hold more of it than the chat template",
                       "本次运行每个请求都有自己的提示，开头是为本次运行抽取的 {n} 个词的标记，服务端缓存最多只能命中聊天模板部分"),
    "errors_of": ("{e} of {n} ({p})", "{n} 个中 {e} 个（{p}）"),
    "scaling_cell": ("×{x} from {a} to {b} ({ta} → {tb} tok/s)", "{a} 到 {b}：×{x}（{ta} → {tb} tok/s）"),
    "one_level": ("one load level only", "只有一个负载等级"),
    "decoding_at_once": ("up to {n} stream(s) decoding at once at {level}",
                         "{level} 时最多 {n} 路同时解码"),
    "running_peak": ("server reports ≤ {r} running, ≤ {w} waiting", "服务端报告最多 {r} 运行、{w} 等待"),
    "num_parallel": ("num_parallel {v}", "num_parallel {v}"),
    "ready_in": ("ready {v} after launch", "启动后 {v} 就绪"),
    "external": ("external server, not launched", "外部服务，未由本工具启动"),
    "no_gpu": ("no GPU", "无 GPU"),
    "cores": ("{n} cores", "{n} 核"),
    "win_memory": ("lowest peak memory", "峰值内存最低"),
    "hl_aggregate": ("At {level}: {a} produced {ta} output tokens/s, {x}× {b} ({tb}).",
                     "{level} 时：{a} 每秒输出 {ta} 个 token，是 {b}（{tb}）的 {x} 倍。"),
    "hl_single_4bit": ("At {level}: one stream of {b} decodes {x}× faster than {a} ({tb} vs {ta} tokens/s): the 4-bit "
                       "weights are about a third of the bytes each token must read. The article says 5–15 tokens/s "
                       "for Ollama (4-bit) and 30–60 for vLLM (FP16).",
                       "{level} 时：{b} 的单流解码比 {a} 快 {x} 倍（{tb} 对 {ta} tokens/s）：4 位权重约为每个 token "
                       "需读取字节数的三分之一。文章称 Ollama（4 位）5–15 tokens/s，vLLM（FP16）30–60。"),
    "hl_single_fp16": ("At {level}: one stream of {a} decodes {x}× faster than {b} ({ta} vs {tb} tokens/s). The "
                       "article says 5–15 tokens/s for Ollama (4-bit) and 30–60 for vLLM (FP16).",
                       "{level} 时：{a} 的单流解码比 {b} 快 {x} 倍（{ta} 对 {tb} tokens/s）。文章称 Ollama（4 位）"
                       "5–15 tokens/s，vLLM（FP16）30–60。"),
    "win_single": ("fastest single stream", "单流最快"),
    "win_aggregate": ("highest throughput at {level}", "{level} 时吞吐最高"),
    "win_ttft": ("lowest TTFT p99 at {level}", "{level} 时 TTFT p99 最低"),
    "win_ready": ("fastest to ready", "就绪最快"),
    # page
    "title": ("pagebench report", "pagebench 报告"),
    "comparison": ("Comparison with the article", "与原文对比"),
    "claims_note": ("Grey lines give the source article's claim for the matching side "
                    "(DeepSeek-R1-Distill-Qwen-32B on its hardware); bold values are this run's measurements.",
                    "灰色小字为原文对应一方的说法（原文在其硬件上测 DeepSeek-R1-Distill-Qwen-32B），粗体为本次实测。"),
    "per_level": ("Per load level", "各负载等级"),
    "charts": ("Charts", "图表"),
    "environment": ("Environment", "环境"),
    "downloads": ("Raw rows (CSV)", "原始数据（CSV）"),
    "scenario": ("Scenario (verbatim)", "测试场景（原文）"),
    "partial": ("Partial report: the run is {status}; only the rows recorded so far are shown.",
                "部分报告：运行状态为 {status}，仅显示已记录的数据。"),
    "cdf_ttft": ("TTFT distribution (CDF)", "TTFT 分布（CDF）"),
    "cdf_itl": ("Inter-token latency distribution (CDF)", "token 间延迟分布（CDF）"),
    "cdf_e2e": ("End-to-end latency distribution (CDF)", "端到端延迟分布（CDF）"),
    "vs_load": ("Throughput and p99 latency against load", "吞吐与 p99 延迟随负载变化"),
    "over_time": ("Output tokens/s and memory over time", "输出速度与内存随时间变化"),
    "lengths": ("Output length distribution", "输出长度分布"),
    "server_timings": ("The server's own timings", "服务端自报的计时"),
    "server_timings_intro": ("Ollama reports how long it spent evaluating the prompt and generating, per request. "
                             "Beside them, what the harness measured at the client for the same requests.",
                             "Ollama 为每个请求报告提示词评估与生成所用的时间；旁边是压测端对同一批请求的实测值。"),
    "where_they_differ": ("where they differ", "差异说明"),
    "errors_time": ("Errors over time (cumulative)", "错误数随时间变化（累计）"),
    "recomputed": ("summary.json was missing (the run did not finish); the aggregates were recomputed from the rows.",
                   "缺少 summary.json（运行未结束），汇总数据由原始记录重新计算。"),
    "seconds": ("seconds", "秒"),
    "seconds_since": ("seconds since the backend's first request", "自该后端首个请求起的秒数"),
    "fraction": ("fraction of requests", "请求比例"),
    "fraction_gaps": ("fraction of token gaps", "token 间隔比例"),
    "level": ("level", "负载等级"),
    "tok_s": ("output tokens/s", "输出 tokens/s"),
    "memory_unit": ("memory, {unit}: {what}", "内存/显存（{unit}）：{what}"),
    "kv_use": ("KV use", "KV 利用率"),
    "output_tokens": ("output tokens", "输出 tokens"),
    "requests": ("requests", "请求数"),
    "errors_cum": ("errors", "错误数"),
    "backend": ("backend", "后端"),
    "started": ("started", "开始"),
    "duration": ("duration", "时长"),
    "status": ("status", "状态"),
}


def t(key: str, lang: str, **kw: object) -> str:
    en, zh = STRINGS[key]
    return (zh if lang == "zh" else en).format(**kw)


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s < 1:
        return f"{s * 1000:.3g} ms" if s * 1000 < 100 else f"{s * 1000:.0f} ms"
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def fmt_bytes(b: float | None) -> str:
    if b is None or not math.isfinite(b):
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}" if b / size < 100 else f"{b / size:.0f} {unit}"
    return f"{b:.0f} B"


def fmt_rate(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt_pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v * 100:.1f}%"
