"""The report in real headless Chromium, opened from disk with every network request refused."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.report import build_report
from tests.report_fixture import make_run
from tests.test_report import ROWS, ok_rows

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("PAGEBENCH_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                                reason="Debian's chromium is not installed (scripts/setup_browser.sh)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = ("file:", "data:", "blob:", "about:")

# per chart: how many traces plotly holds, how many it shows, and how many it drew with a non-empty path
CHART_STATE = """() => [...document.querySelectorAll('.plotly-chart')].map(div => ({
  id: div.id,
  data: (div.data || []).length,
  visible: (div.data || []).filter(t => t.visible !== false && t.visible !== 'legendonly').length,
  drawn: div.querySelectorAll('.scatterlayer g.trace, .barlayer g.trace').length,
  paths: [...div.querySelectorAll('.scatterlayer g.trace path.js-line, .barlayer g.trace path')]
           .filter(p => (p.getAttribute('d') || '').length > 4).length,
  title: div.layout && div.layout.title && div.layout.title.text,
}))"""


class Page:
    def __init__(self, context, url: str) -> None:
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.plotly-chart')].every(d => d._fullLayout && d.querySelector('.main-svg'))",
            timeout=60_000)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    blocked: list[str] = []
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True, args=ARGS, viewport={"width": 1366, "height": 768}, accept_downloads=True)

        def refuse(route) -> None:
            if route.request.url.startswith(LOCAL):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", refuse)
        context.blocked = blocked
        yield context
        context.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return make_run(tmp_path_factory.mktemp("runs"))


def test_report_opens_offline_and_draws(browser, run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, fx = run
    report = build_report(run_dir)
    p = Page(browser, report.as_uri())
    assert p.errors == []
    assert browser.blocked == [], f"the page tried the network: {browser.blocked}"
    page = p.page
    backends = page.eval_on_selector_all("#comparison-table th[data-backend]", "els => els.map(e => e.dataset.backend)")
    assert backends == ["engine", "ollama"]
    rows = page.eval_on_selector_all("#comparison-table tr[data-row]", "els => els.map(e => e.dataset.row)")
    assert rows == ROWS
    for row in rows:
        texts = page.eval_on_selector_all(f"tr[data-row='{row}'] td .m", "els => els.map(e => e.innerText.trim())")
        assert len(texts) == 2 and all(texts), row
    charts = page.evaluate(CHART_STATE)
    assert [c["id"] for c in charts] == ["chart-ttft", "chart-itl", "chart-e2e", "chart-load", "chart-time",
                                         "chart-lengths", "chart-errors"]
    for c in charts:
        assert c["data"] > 0 and c["visible"] > 0, c
        assert c["drawn"] == c["visible"], c
        assert c["paths"] >= c["visible"], c
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    if os.environ.get("PAGEBENCH_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["PAGEBENCH_SCREENSHOT_DIR"]) / "report.png")
    page.close()


def test_level_menu_switches_cdf(browser, run: tuple[Path, dict]) -> None:
    run_dir, fx = run
    page = Page(browser, build_report(run_dir).as_uri()).page
    before = page.evaluate(CHART_STATE)[0]
    assert before["title"].endswith("c=4")
    page.locator("#chart-ttft .updatemenu-header").click()
    page.locator("#chart-ttft .updatemenu-dropdown-button", has_text="c=1").click()
    page.wait_for_function("() => document.getElementById('chart-ttft').layout.title.text.endsWith('c=1')")
    after = page.evaluate(CHART_STATE)[0]
    assert after["visible"] == 2 and after["drawn"] == 2
    shown = page.evaluate("() => document.getElementById('chart-ttft')._fullData.filter(t => t.visible === true).map(t => t.x.length)")
    assert shown == [len(ok_rows(fx["requests"], b, "c=1")) + 1 for b in ("engine", "ollama")]  # +1: starts at 0
    page.close()


def test_csv_link_downloads_rows(browser, run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, fx = run
    page = Page(browser, build_report(run_dir).as_uri()).page
    with page.expect_download() as info:
        page.click("a[download='requests.csv']")
    download = info.value
    assert download.suggested_filename == "requests.csv"
    target = tmp_path / "requests.csv"
    download.save_as(target)
    frame = pd.read_csv(target)
    assert len(frame) == len(fx["requests"])
    assert set(frame["backend"]) == {"engine", "ollama"}
    page.close()


def test_chinese_page(browser, run: tuple[Path, dict]) -> None:
    run_dir, _ = run
    p = Page(browser, build_report(run_dir, lang="zh").as_uri())
    assert p.errors == [] and browser.blocked == []
    groups = p.page.eval_on_selector_all("#comparison-table tr.group th", "els => els.map(e => e.innerText.trim())")
    assert groups == ["核心优势", "显存管理", "速度与延迟", "批处理", "硬件需求", "部署复杂度"]
    assert p.page.inner_text("#comparison-table thead th.feature") == "特性"
    p.page.close()


@pytest.mark.slow
def test_real_bench_run_report_in_browser(browser, tmp_path: Path) -> None:
    """The page `bench run` itself wrote for a run against fake_exact_server, opened offline."""
    pytest.importorskip("harness.cli")
    from tests.report_fixture import bench_fake_run

    run_dir = bench_fake_run(tmp_path)
    p = Page(browser, (run_dir / "report.html").as_uri())
    assert p.errors == [] and browser.blocked == []
    backends = p.page.eval_on_selector_all("#comparison-table th[data-backend]", "els => els.map(e => e.dataset.backend)")
    assert backends == ["fake-paged", "fake-ollama"]
    assert p.page.eval_on_selector_all("#comparison-table tr[data-row]", "els => els.map(e => e.dataset.row)") == ROWS
    for c in p.page.evaluate(CHART_STATE):
        assert c["data"] > 0 and c["drawn"] == c["visible"] > 0 and c["paths"] >= c["visible"], c
    p.page.close()


@pytest.mark.slow
@pytest.mark.ollama
def test_engine_and_ollama_run_report_in_browser(browser, tmp_path: Path) -> None:
    """The page `bench run` wrote for a real small run: the engine on the CPU against the real Ollama."""
    from tests.report_fixture import bench_real_run
    from tests.test_ollama_server import _missing

    if _missing():
        pytest.skip(f"no real Ollama here: {_missing()}")

    run_dir = bench_real_run(tmp_path)
    p = Page(browser, (run_dir / "report.html").as_uri())
    assert p.errors == [] and browser.blocked == []
    backends = p.page.eval_on_selector_all("#comparison-table th[data-backend]", "els => els.map(e => e.dataset.backend)")
    assert backends == ["engine-fp32", "ollama-q4"]
    assert p.page.eval_on_selector_all("#comparison-table tr[data-row]", "els => els.map(e => e.dataset.row)") == ROWS
    for c in p.page.evaluate(CHART_STATE):
        assert c["data"] > 0 and c["drawn"] == c["visible"] > 0 and c["paths"] >= c["visible"], c
    assert "0.24.0" in p.page.inner_text("body")
    p.page.close()
