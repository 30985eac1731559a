"""Honest numbers against one live `engine serve demo` that stays up: no prompt reaches the prefix cache twice
unless a scenario asks for it, every cache hit is counted and warned about, and the KV rows come from /metrics."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from harness.config import load_scenario
from harness.report import build_report, build_table, data, print_summary
from harness.runner import Runner, run_async
from tests.conftest import requires_demo
from tests.server_process import running_server

pytestmark = [pytest.mark.slow, requires_demo]

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("demo", "--dtype", "bfloat16", "--served-model-name", MODEL,
                        log_dir=tmp_path_factory.mktemp("log")) as s:
        yield s


def scenario(path: Path, url: str, workload: str, load: str) -> Path:
    path.write_text(f"""name: {path.stem}
backends:
  - name: engine
    kind: paged
    model: {MODEL}
    url: {url}
workload:
{workload}
load:
{load}
""")
    return path


def run(path: Path, out: Path) -> Path:
    return run_async(Runner(load_scenario(path), out).run()).run_dir


def counters(server) -> tuple[float, float]:
    m = server.wait_idle()
    return m["pagebench:prefix_cache_hits_total"], m["pagebench:prefix_cache_queries_total"]


PLAIN = """  api: chat
  tokenizer: demo
  input_tokens: 384
  output_tokens: 4
  seed: 11"""
LEVELS = """  concurrency: [1, 4]
  requests: [3, 8]
  warmup_requests: 1
  sample_interval_s: 0.05"""


@pytest.fixture(scope="module")
def two_runs(server, tmp_path_factory):
    """The same non-sharing scenario run twice against the same server, with the server's own counters around each."""
    tmp = tmp_path_factory.mktemp("runs")
    path = scenario(tmp / "plain.yaml", server.url, PLAIN, LEVELS)
    out = []
    for n in range(2):
        hits0, queries0 = counters(server)
        run_dir = run(path, tmp / f"out{n}")
        hits1, queries1 = counters(server)
        out.append((run_dir, hits1 - hits0, queries1 - queries0))
    return out


def test_a_non_sharing_scenario_run_twice_finds_only_the_template_cached(two_runs):
    for run_dir, hits, queries in two_runs:
        rows = data.load(run_dir).requests
        assert len(rows) == 13 and rows["error"].isna().all()
        # The server's own counters, which the harness cannot bend: at most the chat template's fixed part of
        # each prompt was found in the prefix cache, a few percent of ~420 tokens. Without per-request prompts
        # and a run tag, the second level and the second run found most of their prompts cached (95%).
        assert queries == rows["prompt_tokens"].sum()
        assert hits / queries < 0.08, (hits, queries)
        assert hits <= rows["template_tokens"].sum(), (hits, queries)
        # and the rows count the same hits, request by request
        assert rows["cached_tokens"].sum() == hits
        assert (rows["cached_tokens"] <= rows["template_tokens"]).all()
        assert rows["index"].is_unique, "every request of a run, warm-ups included, has a prompt of its own"
        for s in json.loads((run_dir / "summary.json").read_text()):
            pc = s["prompt_cache"]
            assert pc["beyond_template_share"] == 0.0 and not pc["warning"] and pc["shared_by_scenario"] is False
    first, second = (data.load(r).requests for r, _, _ in two_runs)
    # Rows are written as requests finish, and requests of one level may finish in either order.
    assert sorted(first["index"]) == sorted(second["index"])
    assert set(first["prompt_tokens"]) == set(second["prompt_tokens"])


def test_cached_share_is_in_the_terminal_table_the_report_and_the_csv(two_runs):
    run_dir = two_runs[1][0]
    buf = io.StringIO()
    print_summary(run_dir, console=Console(file=buf, width=250))
    text = buf.getvalue()
    assert "cached prompt" in text and "beyond template" in text and "Warning" not in text
    html = build_report(run_dir).read_text(encoding="utf-8")
    assert "<th>cached prompt</th>" in html and "cache-warning" not in html.split("<main>")[1].split("<h2")[0]
    stats = __import__("harness.report.metrics", fromlist=["level_stats"]).level_stats(data.load(run_dir))
    assert {"cached_share", "cached_beyond_template_share", "cache_warning"} <= set(stats.columns)
    assert (stats["cached_share"] > 0).all() and (stats["cached_beyond_template_share"] == 0).all()


def test_kv_rows_come_from_the_engines_metrics_during_the_run(two_runs, server):
    run_dir = two_runs[0][0]
    run = data.load(run_dir)
    s = run.samples
    busy = s[s["kv_usage"] > 0]
    assert len(busy) >= 3, "the sampler read the engine's /metrics while requests ran"
    assert busy["kv_utilization"].between(0.01, 1.0).all()
    engine = build_table([run]).columns[0]
    pool, util = engine.cells["kv_pool"], engine.cells["kv_utilization"]
    assert pool.value == pytest.approx(busy["kv_usage"].max())
    peak = busy[busy["kv_usage"] == busy["kv_usage"].max()]
    assert util.value == pytest.approx(peak["kv_utilization"].max())
    # Tokens held over allocated slots: only each running sequence's last block has empty slots (block size 16).
    row = peak.loc[peak["kv_utilization"].idxmax()]
    assert util.value >= 1 - row["running"] * 15 / (row["kv_blocks_used"] * 16) - 1e-9
    assert util.value != pool.value and util.claim == "KV use over 95%"
    assert "pagebench:kv_block_utilization" in server.metrics()


def test_unannounced_reuse_is_warned_in_the_terminal_and_the_report(server, tmp_path):
    # Every line carries the same long system prompt: nothing in the scenario says prompts are shared.
    system = " ".join(["The committee reviewed the harbour accounts line by line before the winter session."] * 25)
    lines = [json.dumps({"messages": [{"role": "system", "content": system},
                                      {"role": "user", "content": f"Question {n}: summarise item {n} of the accounts."}]})
             for n in range(12)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    path = scenario(tmp_path / "hidden.yaml", server.url,
                    "  api: chat\n  source: jsonl\n  jsonl: p.jsonl\n  tokenizer: demo\n  output_tokens: 4",
                    "  concurrency: [1, 4]\n  requests: [3, 8]\n  warmup_requests: 0")
    run_dir = run(path, tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["prompt_cache"]["warning"] for s in summary] == [True, True]
    assert all(s["prompt_cache"]["beyond_template_share"] > 0.5 for s in summary)
    buf = io.StringIO()
    print_summary(run_dir, console=Console(file=buf, width=250))
    assert buf.getvalue().count("Warning: engine at c=") == 2
    html = build_report(run_dir).read_text(encoding="utf-8")
    assert html.count('class="banner alarm cache-warning"') == 2 and html.count('<tr class="warn">') == 2
    assert "NOT FRESH PROMPTS at c=1, c=4" in build_table([data.load(run_dir)]).columns[0].cells["prompt_cache"].text


def test_shared_prefix_still_hits_and_says_it_was_asked_for(server, tmp_path):
    path = scenario(tmp_path / "prefix.yaml", server.url,
                    PLAIN.replace("384", "32") + "\n  shared_prefix: {groups: 1, prefix_tokens: 256}",
                    "  concurrency: [1, 4]\n  requests: [3, 8]\n  warmup_requests: 1")
    loaded = data.load(run(path, tmp_path / "out"))
    assert loaded.run["prompts"]["sharing"].startswith("shared_prefix")
    for s in loaded.summary:
        assert s["prompt_cache"]["share"] > 0.5 and not s["prompt_cache"]["warning"]
    cell = build_table([loaded]).columns[0].cells["prompt_cache"]
    assert "shared prompts asked for by the scenario: shared_prefix" in cell.text and "NOT FRESH" not in cell.text
