"""`python -m harness.reaper PGID GRACE_S`: ends a launched server's process group once bench's process is gone.

bench starts it with a pipe on stdin and never writes to it. However bench ends, a SIGKILL from a CI timeout or
the OOM killer included, the kernel closes that pipe; the reaper then sends the server's whole group SIGTERM, and
SIGKILL after GRACE_S. The group covers a shell wrapper's children, which a parent-death signal would miss. It
lives in its own session, so a signal to bench's process group does not take the reaper down with bench.

Standard library only: it starts in milliseconds and holds little memory for as long as the server runs."""
import os
import signal
import sys
import time


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    pgid, grace_s = int(sys.argv[1]), float(sys.argv[2])
    while os.read(0, 4096):
        pass
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
