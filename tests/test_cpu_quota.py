"""The cgroup CPU quota (docker --cpus) caps the engine's default CPU threads; fake cgroup trees under tmp_path."""
from pathlib import Path

import pytest

from engine import startup
from engine.cpu_quota import cgroup_cpu_limit, usable_cores


def write(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def v2_tree(tmp_path: Path, own_path: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 mount and a /proc/self/cgroup naming own_path."""
    root = tmp_path / "cgroup"
    root.mkdir()
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own_path}\n")
    return root, proc


def v1_tree(tmp_path: Path, proc_cgroup: str, quotas: dict[str, tuple[str, str]]) -> tuple[Path, Path]:
    """A cgroup v1 mount with (cpu.cfs_quota_us, cpu.cfs_period_us) in each folder named, and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_cgroup)
    for folder, (quota, period) in quotas.items():
        write(root / folder / "cpu.cfs_quota_us", quota)
        write(root / folder / "cpu.cfs_period_us", period)
    return root, proc


def test_v2_quota_is_quota_over_period_and_rounds_up_to_whole_cores(tmp_path):
    root, proc = v2_tree(tmp_path)
    write(root / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert usable_cores(64, cgroup_cpu_limit(root, proc)) == 2


def test_v2_max_is_no_limit(tmp_path):
    root, proc = v2_tree(tmp_path)
    write(root / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cores(64, None) == 64


def test_v2_own_cgroup_is_read_below_the_root(tmp_path):
    root, proc = v2_tree(tmp_path, "/system.slice/engine.service")
    write(root / "cpu.max", "max 100000\n")
    write(root / "system.slice/engine.service/cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit(root, proc) == 3.0


def test_v2_nested_limits_the_smaller_parent_wins(tmp_path):
    root, proc = v2_tree(tmp_path, "/parent/child")
    write(root / "cpu.max", "max 100000\n")
    write(root / "parent/cpu.max", "200000 100000\n")
    write(root / "parent/child/cpu.max", "800000 100000\n")
    assert cgroup_cpu_limit(root, proc) == 2.0


def test_v2_host_path_absent_inside_the_container_falls_back_to_the_mount(tmp_path):
    # Without a cgroup namespace /proc/self/cgroup names the host's path, but the container sees its own cgroup
    # mounted at the root.
    root, proc = v2_tree(tmp_path, "/docker/0123abcd")
    write(root / "cpu.max", "100000 100000\n")
    assert cgroup_cpu_limit(root, proc) == 1.0


def test_v1_quota_over_period(tmp_path):
    root, proc = v1_tree(tmp_path, "4:cpu,cpuacct:/\n3:memory:/\n0::/\n", {"cpu,cpuacct": ("250000\n", "100000\n")})
    assert cgroup_cpu_limit(root, proc) == 2.5
    assert usable_cores(64, cgroup_cpu_limit(root, proc)) == 3


def test_v1_cpu_mount_and_own_path(tmp_path):
    root, proc = v1_tree(tmp_path, "2:cpu:/docker/abc\n", {"cpu": ("-1\n", "100000\n"),
                                                         "cpu/docker/abc": ("50000\n", "100000\n")})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cores(64, cgroup_cpu_limit(root, proc)) == 1


def test_v1_minus_one_is_no_limit(tmp_path):
    root, proc = v1_tree(tmp_path, "4:cpu,cpuacct:/\n", {"cpu,cpuacct": ("-1\n", "100000\n")})
    assert cgroup_cpu_limit(root, proc) is None


def test_missing_files_are_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "no-cgroup", tmp_path / "no-proc") is None
    root, proc = v2_tree(tmp_path)
    assert cgroup_cpu_limit(root, proc) is None
    # A quota with its period missing says nothing about the CPUs.
    write(root / "cpu/cpu.cfs_quota_us", "200000\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_missing_proc_cgroup_still_reads_the_mount(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "200000 100000\n")
    assert cgroup_cpu_limit(root, tmp_path / "no-proc") == 2.0


@pytest.mark.parametrize("content", ["", "garbage", "max", "150000", "1.5 100000", "150000 0", "0 100000",
                                     "-5 100000", "150000 100000 7", "\udcff"])
def test_malformed_v2_is_no_limit(tmp_path, content):
    root, proc = v2_tree(tmp_path)
    (root / "cpu.max").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert cgroup_cpu_limit(root, proc) is None


@pytest.mark.parametrize(("quota", "period"), [("lots", "100000"), ("200000", "zero"), ("200000", "0"),
                                               ("", "100000"), ("200000 1", "100000")])
def test_malformed_v1_is_no_limit(tmp_path, quota, period):
    root, proc = v1_tree(tmp_path, "4:cpu,cpuacct:/\n", {"cpu,cpuacct": (quota, period)})
    assert cgroup_cpu_limit(root, proc) is None


def test_malformed_proc_cgroup_and_a_directory_for_a_file_are_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    (root / "cpu.max").mkdir(parents=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_bytes(b"nonsense\n\xff\xfe:::\n0::/../../etc\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_usable_cores_is_at_least_one_and_never_above_the_affinity():
    assert usable_cores(64, 0.01) == 1
    assert usable_cores(4, 16.0) == 4
    assert usable_cores(0, None) == 1


def test_cpu_threads_honour_the_quota_on_a_64_core_host(monkeypatch):
    monkeypatch.setattr(startup.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(startup, "cgroup_cpu_limit", lambda: 1.5)
    assert startup.cpu_threads(None, 1, env={}) == 1  # (2 - 1) // 1
    monkeypatch.setattr(startup, "cgroup_cpu_limit", lambda: 8.0)
    assert startup.cpu_threads(None, 2, env={}) == 3  # (8 - 1) // 2
    monkeypatch.setattr(startup, "cgroup_cpu_limit", lambda: None)
    assert startup.cpu_threads(None, 1, env={}) == 63


def test_cpu_threads_explicit_choices_still_beat_the_quota(monkeypatch):
    monkeypatch.setattr(startup.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(startup, "cgroup_cpu_limit", lambda: 2.0)
    assert startup.cpu_threads(5, 1, env={}) == 5
    assert startup.cpu_threads(None, 1, env={"OMP_NUM_THREADS": "6"}) == 6
    assert startup.cpu_threads(None, 1, env={}, cores=16) == 15
