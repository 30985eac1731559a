"""The source article's claims (shared/ANCHORS.md), shown beside each measured value, in both languages."""
from __future__ import annotations

ARTICLE_SIDE = {"ollama": "ollama", "paged": "vllm", "openai": "vllm"}

SIDE_NAME = {
    "ollama": {"en": "Ollama (4-bit)", "zh": "Ollama（4 位）"},
    "vllm": {"en": "vLLM (FP16)", "zh": "vLLM（FP16）"},
}

# row id -> side -> (en, zh)
CLAIMS: dict[str, dict[str, tuple[str, str]]] = {
    "advantage": {
        "ollama": ("one command, one consumer GPU", "一条命令，一块消费级显卡"),
        "vllm": ("5–10x the requests on the same hardware", "同样硬件上处理 5–10 倍请求"),
    },
    "peak_memory": {
        "ollama": ("VRAM 19–24 GB", "显存 19–24 GB"),
        "vllm": ("VRAM 64–96 GB", "显存 64–96 GB"),
    },
    "memory_management": {
        "ollama": ("dynamic chunked loading", "动态分块加载"),
        "vllm": ("PagedAttention", "PagedAttention"),
    },
    # The article's "KV use" is the share of allocated KV memory that holds tokens: the utilization row, not the
    # pool's occupancy (which says how much of the pool a load needed, and which the article does not quote).
    "kv_utilization": {
        "ollama": ("KV use about 60% (contiguous allocation)", "KV 利用率约 60%（连续分配）"),
        "vllm": ("KV use over 95%", "KV 利用率超过 95%"),
    },
    "decode_speed": {
        "ollama": ("5–15 tokens/s", "5–15 tokens/s"),
        "vllm": ("30–60 tokens/s", "30–60 tokens/s"),
    },
    "scaling": {
        "ollama": ("—", "—"),
        "vllm": ("5–10x the requests on the same hardware", "同样硬件上处理 5–10 倍请求"),
    },
    "batching": {
        "ollama": ("basic", "基础"),
        "vllm": ("continuous, dynamic", "连续、动态批处理"),
    },
    "hardware": {
        "ollama": ("one consumer GPU (≥ 24 GB)", "一块消费级显卡（≥ 24 GB）"),
        "vllm": ("several data-centre GPUs", "多块数据中心显卡"),
    },
    "deployment": {
        "ollama": ("one command", "一条命令"),
        "vllm": ("needs tuning", "需要调优"),
    },
    "model": {
        "ollama": ("DeepSeek-R1-Distill-Qwen-32B, 4-bit", "DeepSeek-R1-Distill-Qwen-32B，4 位量化"),
        "vllm": ("DeepSeek-R1-Distill-Qwen-32B, FP16", "DeepSeek-R1-Distill-Qwen-32B，FP16"),
    },
}


def claim(row_id: str, side: str, lang: str) -> str:
    pair = CLAIMS.get(row_id, {}).get(side or "")
    if pair is None:
        return ""
    return pair[0] if lang == "en" else pair[1]
