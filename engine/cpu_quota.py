"""The CPU quota of this process's cgroup: what `docker run --cpus=N` and compose's `cpus:` set.

sched_getaffinity still lists every host core inside such a container, so without this the engine would start one
thread per host core on a quota of two and thrash."""
import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

# cgroup v1 mounts the cpu controller under either name (one is often a symlink to the other); reading both costs
# nothing and the smaller limit is the one that binds.
V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs this process may use under its cgroup CPU quota (1.5 for `--cpus=1.5`), or None for no quota.

    Limits nest (a container inside a limited slice), so every level from the process's own cgroup up to the root
    is read, of cgroup v2 and v1 alike, and the smallest limit wins. Anything unreadable or malformed counts as no
    limit: a quota is a hint for the thread count, never a reason to fail start-up."""
    paths = own_cgroup_paths(proc_cgroup)
    limits = [v2_limit(directory) for directory in levels(root, paths.get("v2", "/"))]
    for mount in V1_CPU_MOUNTS:
        limits += [v1_limit(directory) for directory in levels(root / mount, paths.get("v1", "/"))]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def usable_cores(affinity: int, limit: float | None) -> int:
    """The cores this process can keep busy: those it may run on, capped by its quota rounded up, at least one.

    Rounded up because a quota of 1.5 CPUs still lets two threads run, each part of the time."""
    if limit is not None:
        affinity = min(affinity, math.ceil(limit))
    return max(1, affinity)


def own_cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path under v2 ("0::/path") and under v1's cpu controller ("4:cpu,cpuacct:/path")."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except (OSError, ValueError):
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    return paths


def levels(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory under mount and each parent up to the mount itself.

    Inside a container the mount is often already the container's own cgroup while /proc/self/cgroup still names
    the host's path (/docker/<id>); those directories do not exist, their reads fail, and the mount's own limit
    remains."""
    parts = [part for part in cgroup_path.split("/") if part]
    if ".." in parts:  # never read outside the mount on a strange path
        parts = []
    directories = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
    return directories + [mount]


def v2_limit(directory: Path) -> float | None:
    """cpu.max: "max 100000" is no limit, "150000 100000" is 1.5 CPUs."""
    fields = read_fields(directory / "cpu.max")
    if fields is None or len(fields) != 2:
        return None
    return ratio(fields[0], fields[1])


def v1_limit(directory: Path) -> float | None:
    """cpu.cfs_quota_us over cpu.cfs_period_us; a quota of -1 is no limit."""
    quota = read_fields(directory / "cpu.cfs_quota_us")
    period = read_fields(directory / "cpu.cfs_period_us")
    if quota is None or period is None or len(quota) != 1 or len(period) != 1:
        return None
    return ratio(quota[0], period[0])


def ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    # v2's "max" fails int() above and v1's -1 is refused here: both mean no limit. Zero or other negatives are not
    # quotas the kernel would accept.
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def read_fields(file: Path) -> list[str] | None:
    try:
        return file.read_text().split()
    except (OSError, ValueError):  # missing, unreadable, a directory, or not text
        return None


if __name__ == "__main__":
    limit = cgroup_cpu_limit()
    affinity = len(os.sched_getaffinity(0))
    print(f"cgroup CPU limit: {limit}; affinity cores: {affinity}; usable cores: {usable_cores(affinity, limit)}")
