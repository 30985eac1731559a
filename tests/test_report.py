"""The report from a contract-conforming run folder: table numbers, Chinese rendering, CSV, partial runs."""
from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from harness.report import build_compare, build_report, build_table, charts, data, print_summary
from tests.report_fixture import make_run

ROWS = ["advantage", "peak_memory", "memory_management", "kv_pool", "kv_utilization", "decode_speed", "aggregate", "ttft",
        "itl", "e2e", "errors", "prompt_cache", "scaling", "batching", "hardware", "deployment", "version", "model"]


def ok_rows(rows: list[dict], backend: str, level: str) -> list[dict]:
    return [r for r in rows if r["backend"] == backend and r["level"] == level and r["phase"] == "measure"
            and r["error"] is None]


def expected(fx: dict, backend: str) -> dict[str, float]:
    """The table's numbers, computed straight from the fixture's rows with numpy."""
    reqs = fx["requests"]
    low, high = ok_rows(reqs, backend, "c=1"), ok_rows(reqs, backend, "c=4")
    every_high = [r for r in reqs if r["backend"] == backend and r["level"] == "c=4" and r["phase"] == "measure"]
    every_low = [r for r in reqs if r["backend"] == backend and r["level"] == "c=1" and r["phase"] == "measure"]

    def tps(ok: list[dict], every: list[dict]) -> float:
        span = max(r["finished"] for r in every) - min(r["intended_send"] for r in every)
        return sum(r["output_tokens"] for r in ok) / span

    measured = [r for r in reqs if r["backend"] == backend and r["phase"] == "measure"]
    return {
        "decode_low": float(np.percentile([r["decode_tps"] for r in low], 50)),
        "decode_high": float(np.percentile([r["decode_tps"] for r in high], 50)),
        "aggregate": tps(high, every_high),
        "scaling": tps(high, every_high) / tps(low, every_low),
        "ttft_p50": float(np.percentile([r["ttft_s"] for r in high], 50)),
        "ttft_p99": float(np.percentile([r["ttft_s"] for r in high], 99)),
        "itl_p99": float(np.percentile([g for r in high for g in r["itl_s"]], 99)),
        "e2e_p50": float(np.percentile([r["e2e_s"] for r in high], 50)),
        "peak_rss": float(max(s["rss_bytes"] for s in fx["samples"] if s["backend"] == backend)),
        "errors": float(sum(1 for r in measured if r["error"])),
        "requests": float(len(measured)),
    }


class Cells(HTMLParser):
    """Collects the comparison table: column headers and the text of each row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.backends: list[str] = []
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "th" and "data-backend" in a:
            self.backends.append(a["data-backend"])
        if tag == "tr":
            self._row = a.get("data-row")
            if self._row:
                self.rows[self._row] = []
        if tag == "td" and self._row:
            self._in_td = True
            self.rows[self._row].append("")
        elif tag == "div" and self._in_td and self.rows[self._row][-1]:
            self.rows[self._row][-1] += "\n"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_td = False

    def handle_data(self, text: str) -> None:
        if self._in_td and self._row:
            self.rows[self._row][-1] += text


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    return p


def embedded_csvs(html: str) -> dict[str, str]:
    """The CSV texts the download links serve, decoded from the page's inline script."""
    files = dict(re.findall(r'<a class="dl" id="(csv-\d+)" download="([^"]+)"', html))
    body = re.search(r"const CSVS = (\{.*?\});\n", html, re.S).group(1)
    return {files[k]: v for k, v in json.loads(body.replace("<\\/", "</")).items()}


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, dict]:
    return make_run(tmp_path)


@pytest.mark.parametrize("backend", ["engine", "ollama"])
def test_table_numbers_match_rows(run: tuple[Path, dict], backend: str) -> None:
    run_dir, fx = run
    table = build_table([data.load(run_dir)], "en")
    col = next(c for c in table.columns if c.backend == backend)
    want = expected(fx, backend)
    c = col.cells
    assert c["decode_speed"].values["lowest"] == pytest.approx(want["decode_low"], rel=1e-9)
    assert c["decode_speed"].values["highest"] == pytest.approx(want["decode_high"], rel=1e-9)
    assert c["aggregate"].value == pytest.approx(want["aggregate"], rel=1e-9)
    assert c["scaling"].value == pytest.approx(want["scaling"], rel=1e-9)
    assert c["ttft"].values["p50"] == pytest.approx(want["ttft_p50"], rel=1e-9)
    assert c["ttft"].values["p99"] == pytest.approx(want["ttft_p99"], rel=1e-9)
    assert c["itl"].values["p99"] == pytest.approx(want["itl_p99"], rel=1e-9)
    assert c["e2e"].values["p50"] == pytest.approx(want["e2e_p50"], rel=1e-9)
    assert c["peak_memory"].value == want["peak_rss"]
    assert "RAM" in c["peak_memory"].text  # CPU-only host: RAM, never called VRAM
    assert c["errors"].value == want["errors"] and c["errors"].values["requests"] == want["requests"]
    assert col.low_level == "c=1" and col.high_level == "c=4"
    # formatted text carries the same number
    assert f"{want['aggregate']:.3g}" in c["aggregate"].text


def test_memory_batching_and_claims(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    table = build_table([data.load(run_dir)], "en")
    engine, ollama = table.columns
    kv = max(s["kv_usage"] for s in fx["samples"] if s["backend"] == "engine")
    assert engine.cells["kv_pool"].value == pytest.approx(kv)
    at_peak = max(s["kv_utilization"] for s in fx["samples"] if s["backend"] == "engine" and s["kv_usage"] == kv)
    assert engine.cells["kv_utilization"].value == pytest.approx(at_peak)
    assert engine.cells["kv_utilization"].claim == "KV use over 95%" and engine.cells["kv_pool"].claim == ""
    # Ollama reports no KV utilization, so the article's "about 60%" has nothing to stand beside
    assert ollama.cells["kv_utilization"].value is None and ollama.cells["kv_utilization"].claim == ""
    assert "block size 16" in engine.cells["memory_management"].text
    assert "num_ctx 4096" in ollama.cells["memory_management"].text
    assert "size_vram" in ollama.cells["memory_management"].text
    # the engine streamed 4 requests at once at c=4; Ollama with num_parallel 1 only ever one
    assert engine.cells["batching"].value == 4.0 and ollama.cells["batching"].value == 1.0
    assert engine.cells["deployment"].value == 3.0 and ollama.cells["deployment"].value == 1.5
    assert engine.side == "vllm" and ollama.side == "ollama"
    assert engine.cells["decode_speed"].claim == "30–60 tokens/s"
    assert ollama.cells["decode_speed"].claim == "5–15 tokens/s"
    assert ollama.cells["peak_memory"].claim == "VRAM 19–24 GB"


def test_headlines_state_the_ratios_from_the_rows(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    e, o = expected(fx, "engine"), expected(fx, "ollama")
    table = build_table([data.load(run_dir)], "en")
    agg, single = table.headlines
    assert agg.startswith("At c=4: engine produced") and f"{e['aggregate'] / o['aggregate']:.1f}× ollama" in agg
    x = o["decode_low"] / e["decode_low"]
    faster = f"{x:.2f}× faster than engine" if x >= 1 else f"{1 / x:.2f}× faster than ollama"
    assert single.startswith("At c=1: one stream of") and faster in single and "5–15 tokens/s" in single
    zh = build_table([data.load(run_dir)], "zh").headlines
    assert len(zh) == 2 and "倍" in zh[0]
    assert agg in build_report(run_dir).read_text()


def test_a_4bit_openai_server_stands_on_the_ollama_side(run: tuple[Path, dict]) -> None:
    """llama.cpp's llama-server is an `openai` backend but the article's 4-bit side: `article_side` says so."""
    run_dir, _ = run
    info = json.loads((run_dir / "run.json").read_text())
    for b in info["backends"]:
        if b["name"] == "ollama":
            b["kind"], b["side"] = "openai", "ollama"
    (run_dir / "run.json").write_text(json.dumps(info))
    engine, llamacpp = build_table([data.load(run_dir)], "en").columns
    assert llamacpp.kind == "openai" and llamacpp.side == "ollama" and engine.side == "vllm"
    assert llamacpp.cells["decode_speed"].claim == "5–15 tokens/s"


def test_advantages_follow_measurements(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    table = build_table([data.load(run_dir)], "en")
    by = {c.backend: c for c in table.columns}
    e, o = expected(fx, "engine"), expected(fx, "ollama")
    faster = "engine" if e["aggregate"] > o["aggregate"] else "ollama"
    lighter = "engine" if e["peak_rss"] < o["peak_rss"] else "ollama"
    single = "engine" if e["decode_low"] > o["decode_low"] else "ollama"
    assert "highest throughput at c=4" in by[faster].cells["advantage"].text
    assert "lowest peak memory" in by[lighter].cells["advantage"].text
    assert "fastest single stream" in by[single].cells["advantage"].text
    other = {"engine": "ollama", "ollama": "engine"}
    assert "highest throughput" not in by[other[faster]].cells["advantage"].text


def test_identical_columns_win_nothing(run: tuple[Path, dict]) -> None:
    run_dir, _ = run
    loaded = data.load(run_dir)
    table = build_table([loaded, loaded])
    engines = [c for c in table.columns if c.backend == "engine"]
    assert len(engines) == 2 and [c.cells["advantage"].text for c in engines] == ["—", "—"]


def test_html_page_self_contained(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    out = build_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text(encoding="utf-8")
    cells = parse(html)
    assert cells.backends == ["engine", "ollama"]
    assert list(cells.rows) == ROWS
    assert all(len(v) == 2 for v in cells.rows.values())
    assert "30–60 tokens/s" in cells.rows["decode_speed"][0]
    assert fx["run"]["backends"][1]["version"] in cells.rows["version"][1]
    assert html.count("Plotly.newPlot") == 1 and html.count('class="plotly-chart"') == 7
    assert "plotly.js v" in html
    page_only = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_only)
    assert "@import" not in page_only and "url(" not in page_only
    assert "# tiny fixture scenario" in html and "AMD EPYC 7B13" in html


def test_chinese_rendering(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    out = build_report(run_dir, lang="zh")
    assert out.name == "report.zh.html"
    html = out.read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in html
    for term in ("特性", "核心优势", "显存管理", "批处理", "硬件需求", "部署复杂度"):
        assert term in html, term
    cells = parse(html)
    assert list(cells.rows) == ROWS
    assert "原文：30–60 tokens/s" in cells.rows["decode_speed"][0]
    assert "KV 利用率超过 95%" in cells.rows["kv_utilization"][0]
    assert "块大小 16 tokens" in cells.rows["memory_management"][0]
    want = expected(fx, "engine")
    assert f"{want['aggregate']:.3g} tok/s（c=4 时）" in cells.rows["aggregate"][0]
    zh = build_table([data.load(run_dir)], "zh")
    en = build_table([data.load(run_dir)], "en")
    assert [c.cells["aggregate"].value for c in zh.columns] == [c.cells["aggregate"].value for c in en.columns]


def test_csv_downloads_hold_the_rows(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    csvs = embedded_csvs(build_report(run_dir).read_text(encoding="utf-8"))
    assert set(csvs) == {"requests.csv", "samples.csv", "events.csv", "levels.csv"}
    reqs = pd.read_csv(io.StringIO(csvs["requests.csv"]))
    assert len(reqs) == len(fx["requests"])
    src = pd.DataFrame(fx["requests"])
    assert np.allclose(reqs["ttft_s"].to_numpy(dtype=float), src["ttft_s"].to_numpy(dtype=float), equal_nan=True)
    assert (reqs["error"].notna()).sum() == src["error"].notna().sum()
    assert json.loads(reqs["itl_s"].iloc[3]) == pytest.approx(fx["requests"][3]["itl_s"])
    olla = reqs[reqs["backend"] == "ollama"].dropna(subset=["server.eval_count"])
    assert (olla["server.eval_count"] == olla["output_tokens"]).all() and len(olla) > 0
    assert len(pd.read_csv(io.StringIO(csvs["samples.csv"]))) == len(fx["samples"])
    levels = pd.read_csv(io.StringIO(csvs["levels.csv"]))
    assert list(levels["level"]) == ["c=1", "c=4", "c=1", "c=4"]


def test_cdf_traces_are_the_measured_values(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    series = charts.series_for([data.load(run_dir)])
    assert [s.color for s in series] == charts.PALETTE[:2]
    fig = charts.cdf(series, "ttft", "en")
    shown = [tr for tr in fig.data if tr.visible]
    assert [tr.name for tr in shown] == ["engine", "ollama"]
    want = sorted(r["ttft_s"] * 1000 for r in ok_rows(fx["requests"], "engine", "c=4"))
    assert list(shown[0].x[1:]) == pytest.approx(want) and shown[0].y[-1] == 1.0 and shown[0].y[0] == 0.0
    for key, figure in charts.all_figures(series, "en").items():
        colors = {tr.legendgroup: (tr.line.color if "line" in tr and tr.line.color else tr.marker.color)
                  for tr in figure.data}
        assert colors == {"engine": charts.PALETTE[0], "ollama": charts.PALETTE[1]}, key


def test_partial_run_without_summary(tmp_path: Path) -> None:
    run_dir, fx = make_run(tmp_path, status="interrupted")
    assert not (run_dir / "summary.json").exists()
    with open(run_dir / "requests.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"backend": "ollama", "level": "c=4", "pha')  # torn by the crash
    html = build_report(run_dir).read_text(encoding="utf-8")
    assert 'id="partial-banner"' in html and "interrupted" in html
    assert "recomputed from the rows" in html
    col = next(c for c in build_table([data.load(run_dir)]).columns if c.backend == "ollama")
    measured = [r for r in fx["requests"] if r["backend"] == "ollama" and r["phase"] == "measure"]
    assert col.cells["errors"].values["requests"] == len(measured)


def test_open_loop_levels_pick_highest_rate(tmp_path: Path) -> None:
    run_dir, fx = make_run(tmp_path)
    rename = {"c=1": ("rate=0.5", 0.5), "c=4": ("rate=4.0", 4.0)}
    info = json.loads((run_dir / "run.json").read_text())
    info["levels"] = [{"label": rename[lv["label"]][0], "mode": "open", "concurrency": None,
                       "rate": rename[lv["label"]][1]} for lv in info["levels"]][::-1]
    (run_dir / "run.json").write_text(json.dumps(info))
    rows = [dict(r, level=rename[r["level"]][0], concurrency=None, rate=rename[r["level"]][1]) for r in fx["requests"]]
    (run_dir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").unlink()
    col = build_table([data.load(run_dir)]).columns[0]
    assert (col.low_level, col.high_level) == ("rate=0.5", "rate=4.0")
    assert col.cells["aggregate"].value == pytest.approx(expected(fx, "engine")["aggregate"])


def test_backend_that_never_answered(tmp_path: Path) -> None:
    run_dir, fx = make_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    info["backends"].append({"name": "vllm", "kind": "openai", "model": "m", "url": "http://127.0.0.1:9",
                             "launched": False, "status": "failed", "error": "connection refused", "info": {}})
    (run_dir / "run.json").write_text(json.dumps(info))
    html = build_report(run_dir).read_text(encoding="utf-8")
    cells = parse(html)
    assert cells.backends == ["engine", "ollama", "vllm"]
    assert cells.rows["aggregate"][2].startswith("not measured")
    assert cells.rows["decode_speed"][2] == "not measured\narticle: 30–60 tokens/s"  # claim kept for openai kind
    assert "external server" in cells.rows["deployment"][2]
    assert "connection refused" in html


def test_compare_two_runs(tmp_path: Path) -> None:
    a, _ = make_run(tmp_path / "a", seed=1)
    b, _ = make_run(tmp_path / "b", seed=2)
    out = build_compare([a, b], tmp_path / "compare.html")
    cells = parse(out.read_text(encoding="utf-8"))
    assert cells.backends == ["engine", "ollama", "engine", "ollama"]
    assert all(len(v) == 4 for v in cells.rows.values())
    # ratios only within a run: each engine against the Ollama measured on its own host
    assert len(build_table([data.load(a), data.load(b)], "en").headlines) == 4
    series = charts.series_for([data.load(a), data.load(b)])
    assert len({s.color for s in series}) == 4 and all(a.name in s.label or b.name in s.label for s in series)


def test_compare_leaves_out_backends_that_never_started(tmp_path: Path) -> None:
    a, _ = make_run(tmp_path / "a", seed=1)
    b, _ = make_run(tmp_path / "b", seed=2)
    info = json.loads((a / "run.json").read_text())
    info["backends"].append({"name": "vllm", "kind": "openai", "model": "m", "url": "http://127.0.0.1:9",
                             "launched": True, "status": "failed", "error": "exited with code 2", "info": {}})
    (a / "run.json").write_text(json.dumps(info))
    html = build_compare([a, b], tmp_path / "compare.html").read_text(encoding="utf-8")
    assert parse(html).backends == ["engine", "ollama", "engine", "ollama"]
    assert len(charts.series_for([data.load(a), data.load(b)])) == 4
    assert "exited with code 2" in html  # still named, in the run's environment section


def test_bad_input_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run.json"):
        build_report(tmp_path)
    run_dir, _ = make_run(tmp_path)
    with pytest.raises(ValueError, match="lang"):
        build_report(run_dir, lang="fr")
    assert not (run_dir / "report.fr.html").exists()
    with pytest.raises(ValueError, match="at least one"):
        build_compare([], tmp_path / "x.html")
    info = json.loads((run_dir / "run.json").read_text())
    info["backends"][0]["kind"] = "llama"
    (run_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"(?s)run.json.*backends\.0\.kind"):
        build_report(run_dir)


def test_terminal_summary(run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    console = Console(record=True, width=160)
    print_summary(run_dir, console=console)
    text = console.export_text()
    want = expected(fx, "engine")
    assert "engine" in text and "ollama" in text and "Batching measured" in text
    assert f"{want['aggregate']:.3g} tok/s" in text
    assert "article: 30–60 tokens/s" in text


@pytest.mark.slow
def test_report_from_real_bench_run(tmp_path: Path) -> None:
    """`bench run` against fake_exact_server, then the table checked against the rows it wrote."""
    pytest.importorskip("harness.cli")
    from tests.report_fixture import bench_fake_run

    run_dir = bench_fake_run(tmp_path)
    assert (run_dir / "report.html").exists(), "bench run did not write report.html"
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines() if line.strip()]
    info = json.loads((run_dir / "run.json").read_text())
    table = build_table([data.load(run_dir)])
    assert [c.backend for c in table.columns] == [b["name"] for b in info["backends"]] == ["fake-paged", "fake-ollama"]
    for col in table.columns:
        assert (col.low_level, col.high_level) == ("c=1", "c=3")
        high = ok_rows(rows, col.backend, "c=3")
        every = [r for r in rows if r["backend"] == col.backend and r["level"] == "c=3" and r["phase"] == "measure"]
        span = max(r["finished"] for r in every) - min(r["intended_send"] for r in every)
        assert col.cells["aggregate"].value == pytest.approx(sum(r["output_tokens"] for r in high) / span, rel=1e-9)
        assert col.cells["ttft"].values["p99"] == pytest.approx(np.percentile([r["ttft_s"] for r in high], 99))
        measured = [r for r in rows if r["backend"] == col.backend and r["phase"] == "measure"]
        assert col.cells["errors"].value == sum(1 for r in measured if r["error"])
        # the fake server streams every request at once: more than one stream must overlap at c=3
        assert col.cells["batching"].value >= 2
    paged = table.columns[0]
    assert paged.cells["errors"].value >= 1  # --fail-every 7 on the paged side
    assert "block size 16" in paged.cells["memory_management"].text  # from the fake /info
    assert table.columns[1].cells["version"].text == "0.0.0-fake_exact_server"
    html = build_report(run_dir, lang="zh").read_text(encoding="utf-8")
    assert "fake-paged" in html and "部署复杂度" in html
