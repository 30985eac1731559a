"""benchmarks/request_timeline.py lines a run's rows up against `engine serve --request-log` on one clock: the
monotonic one where client and server share a boot, so a wall-clock step in mid-run (seen once in CI: a VM's clock
jumped 35 s) cannot make a server stamp precede the client's send."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("request_timeline",
                                              Path(__file__).resolve().parents[1] / "benchmarks/request_timeline.py")
request_timeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(request_timeline)

BOOT = "boot-a"
UNIX0, MONO0 = 1_800_000_000.0, 500.0  # the harness's anchor: a row's unix stamp is UNIX0 + (monotonic - MONO0)
STEP = 35.0  # the wall clock jumps forward between the harness's anchor and the server's


def _run(tmp_path: Path, server_boot: str) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"clock": {"unix0": UNIX0, "monotonic0": MONO0, "boot_id": BOOT}}))
    rows, log = [], []
    for i in range(3):
        send = MONO0 + 1.0 + i  # monotonic seconds, as both processes read them
        mono = {"arrival": send + 0.01, "queued": send + 0.02, "first_scheduled": send + 0.03,
                "first_token": send + 0.10, "finished": send + 0.50}
        rows.append({"phase": "measure", "level": "c=1", "server": {"response_id": f"r{i}"},
                     "intended_send": UNIX0 + send - MONO0, "first_token": UNIX0 + send + 0.11 - MONO0})
        # The server mapped its monotonic clock to unix after the step: its unix stamps run STEP seconds ahead.
        log.append({"request_id": f"r{i}", **{k: UNIX0 + STEP + t - MONO0 for k, t in mono.items()},
                    "monotonic": mono, "boot_id": server_boot})
    (run_dir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log_path = tmp_path / "requests.log"
    log_path.write_text("".join(json.dumps(e) + "\n" for e in log))
    return run_dir, log_path


def _timeline(run_dir: Path, log_path: Path) -> tuple[str, dict]:
    engine = {e["request_id"]: e for e in map(json.loads, log_path.open())}
    rows, clock = request_timeline.load_rows(run_dir, None)
    used = request_timeline.on_one_clock(rows, engine, clock)
    return used, request_timeline.timeline(rows, engine)


def test_one_boot_compares_on_the_monotonic_clock_whatever_the_wall_clock_did(tmp_path):
    used, tl = _timeline(*_run(tmp_path, BOOT))
    assert used == "monotonic"
    assert tl["phase_s"]["send_to_arrival"]["min"] == pytest.approx(0.01)
    assert tl["phase_s"]["first_token_to_client"]["max"] == pytest.approx(0.01)


def test_another_boot_falls_back_to_unix_stamps_and_shows_the_step(tmp_path):
    used, tl = _timeline(*_run(tmp_path, "boot-b"))
    assert used == "unix"
    assert tl["phase_s"]["send_to_arrival"]["min"] == pytest.approx(STEP + 0.01)
    assert tl["phase_s"]["first_token_to_client"]["max"] == pytest.approx(0.01 - STEP)
