"""Where a level's time to first token goes: the harness's rows of one `bench run` lined up against the engine's
`engine serve --request-log FILE`, matched by the response id (the harness keeps it in a row's `server` field, from
the stream's usage chunk). Prints JSON.

    python benchmarks/request_timeline.py RUN_DIR REQUEST_LOG [--level c=64]

Per request, from the harness's intended send: the server's receipt of it (before its body is parsed), queued in
the engine (after the chat template and tokenizing), first scheduled, first token at the engine, first token at
the client. Medians and extremes of each, and the distinct times at which a step took a new request in.
Where the harness and the server ran on one boot of one host, both sides are compared on the monotonic clock, which a
wall-clock step during the run (NTP, a VM restored from a snapshot) does not move; otherwise on their unix stamps.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

STAMPS = ("arrival", "queued", "first_scheduled", "first_token")


def load_rows(run_dir: Path, level: str | None) -> tuple[list[dict], dict]:
    paths = sorted(run_dir.glob("**/requests.jsonl"))
    if not paths:
        raise SystemExit(f"no requests.jsonl under {run_dir}")
    clock = json.loads(paths[0].with_name("run.json").read_text()).get("clock") or {}
    rows = [json.loads(line) for path in paths for line in path.open()]
    rows = [r for r in rows if r["phase"] == "measure" and r.get("first_token") and (r.get("server") or {}).get("response_id")]
    levels = sorted({r["level"] for r in rows})
    if level is None and len(levels) > 1:
        raise SystemExit(f"{run_dir} holds levels {', '.join(levels)}: pick one with --level")
    return [r for r in rows if level is None or r["level"] == level], clock


def on_one_clock(rows: list[dict], engine: dict[str, dict], clock: dict) -> str:
    """Puts the client's stamps and the server's on the monotonic clock where both ran on this boot of one host
    (rows changed in place); returns which clock the comparison uses."""
    boot = clock.get("boot_id")
    if clock.get("monotonic0") is None or boot is None or any(e.get("boot_id") != boot for e in engine.values()):
        return "unix"
    shift = clock["monotonic0"] - clock["unix0"]
    for r in rows:
        r["intended_send"] += shift
        r["first_token"] += shift
    for e in engine.values():
        e.update(e["monotonic"])
    return "monotonic"



def spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 4), "p50": round(statistics.median(values), 4), "max": round(max(values), 4)}


def timeline(rows: list[dict], engine: dict[str, dict]) -> dict:
    matched = [(r, engine[rid]) for r in rows if (rid := r["server"]["response_id"]) in engine]
    if not matched:
        raise SystemExit("no request of the run is in the request log (another server's log?)")
    t0 = min(r["intended_send"] for r, _ in matched)
    out: dict = {"requests": len(matched), "unmatched": len(rows) - len(matched),
                 "from_first_send_s": {k: spread([e[k] - t0 for _, e in matched]) for k in STAMPS},
                 "client_first_token_s": spread([r["first_token"] - t0 for r, _ in matched])}
    out["phase_s"] = {
        "send_to_arrival": spread([e["arrival"] - r["intended_send"] for r, e in matched]),
        "arrival_to_queued": spread([e["queued"] - e["arrival"] for _, e in matched]),
        "queued_to_scheduled": spread([e["first_scheduled"] - e["queued"] for _, e in matched]),
        "scheduled_to_first_token": spread([e["first_token"] - e["first_scheduled"] for _, e in matched]),
        "first_token_to_client": spread([r["first_token"] - e["first_token"] for r, e in matched]),
    }
    out["steps_taking_new_requests_s"] = sorted({round(e["first_scheduled"] - t0, 3) for _, e in matched})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("request_log", type=Path)
    ap.add_argument("--level", help="the level to read, as the run names it (c=64, r=2.0)")
    args = ap.parse_args()
    engine = {e["request_id"]: e for e in map(json.loads, args.request_log.open()) if e.get("first_token")}
    rows, clock = load_rows(args.run_dir, args.level)
    used = on_one_clock(rows, engine, clock)
    json.dump({"clock": used, **timeline(rows, engine)}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
