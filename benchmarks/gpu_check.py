"""`make gpu-check`: the whole GPU check in one command, for a machine with an NVIDIA GPU and
torch already installed (no venv, no downloads; docs/gpu_check.md).

Stages, each run to its end (or its time limit) whatever the others did:
  build      setup.py build_ext --inplace for this GPU's architecture only
             (TORCH_CUDA_ARCH_LIST from torch.cuda.get_device_capability(), MAX_JOBS = cores,
             RNN_FUSED_CUDA=1, RNN_FUSED_SELFTESTS=1)
  tests      pytest on tests/test_cuda_gpu.py, test_simt.py and test_simt_cluster.py (the
             emulator's self-test kernels also run on CUDA tensors there); the project's
             pytest addopts are dropped, so pytest-benchmark need not be installed; in one
             pytest-xdist worker where xdist is installed, so that a crash names its test
  benchmark  python -m rnn_fused gpu-check (rnn_fused/tools/gpu_check.py)
  fit-model  python -m rnn_fused fit-model OUT/gpu_check.json: the cost model's constants
             refitted to the benchmark's measured steps (rnn_fused/tools/fit_model.py)
  smem-counters  benchmarks/smem_counters.py: Nsight Compute's shared-memory counters of the
             recurrence kernels (wavefronts per load, the cost model's assumption)
Each stage's output goes to the terminal and to OUT/<stage>.log; OUT/stages.md and
OUT/stages.json sum them up. A test process that dies of a signal leaves its native frames in
OUT/native_backtrace.txt (benchmarks/native_backtrace.c, preloaded where a C compiler is
found), with the extension's frames resolved to functions and lines (addr2line). After the
stages OUT/toolchain.txt says what the extension was built with and runs against (compilers,
C++ ABI, libstdc++) and whether a C++ error raised by the extension survives, with CUDA
initialised and without.
Exit status 0 when every stage passed, else 1.

This script imports torch but not rnn_fused (which is not built yet when it starts).

Usage: python3 benchmarks/gpu_check.py [--out gpu_out] [--budget-s 80] [--min-seconds 0.15] [--stages build,tests,...]
(--stages: which stages, in that order; e.g. a call that built the extension itself first, with
no time limit, passes benchmark,tests,fit-model,smem-counters)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_NAMES = ("build", "tests", "benchmark", "fit-model", "smem-counters")
TEST_FILES = ("tests/test_cuda_gpu.py", "tests/test_simt.py", "tests/test_simt_cluster.py")
# Limits that still end the whole check within a 10-minute session if a stage hangs (a kernel
# that never returns): they add up to 600 s with the benchmark's default budget. On the H200 of
# 2026-12-04: the build did not finish in 338 s (the SIMT emulator's kernels were one g++ job of
# several minutes, now eight: csrc/cuda/elman_kernel_list.h; the CUDA one took less with
# --split-compile), the tests 41 s, the benchmark 79 s at 0.15 s per measurement (every row
# inside a 120 s budget), the shared-memory counters 9 s, the fit 1 s on 2026-11-30 (and more
# than 10 s on the second run of 2026-12-04, whose report held the lane-row shapes too).
BUILD_TIMEOUT_S = 380
TESTS_TIMEOUT_S = 60
BENCHMARK_BUDGET_S = 80
BENCHMARK_SLACK_S = 30  # beyond the benchmark's own budget: the step phases, autotuning, the report
BENCHMARK_MIN_SECONDS = 0.15  # per measurement (rnn-fused gpu-check's own default: 0.3)
FIT_TIMEOUT_S = 30
SMEM_COUNTERS_TIMEOUT_S = 20


@dataclass
class Stage:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the inherited environment
    timeout_s: float = 600.0
    # Filled in by run_stage:
    status: str = "not run"  # "passed", "failed (exit status N)", "timed out after N s", "could not start: ..."
    seconds: float = 0.0
    last_line: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def cuda_arch_list() -> tuple[str | None, str]:
    """("9.0", description) for the visible GPU, or (None, why not)."""
    try:
        import torch
    except ImportError as error:
        return None, f"torch cannot be imported: {error}"
    if not torch.cuda.is_available():
        return None, "no CUDA device: torch.cuda.is_available() is False"
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}", f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def crash_isolation() -> list[str]:
    """pytest-xdist's one worker where it is installed: a test that kills its process (a
    segmentation fault) is then reported as a failure by name, and a new worker runs the tests
    after it, however many crash (xdist's default stops replacing workers after 4, which left
    16 tests unrun on the H200); without xdist such a crash ends the stage there."""
    import importlib.util

    return ["-n", "1", "--max-worker-restart=1000"] if importlib.util.find_spec("xdist") is not None else []


def native_backtrace_env(out: str) -> dict[str, str]:
    """The environment that makes a crashing test process leave its native frames in
    OUT/native_backtrace.txt: benchmarks/native_backtrace.c built into OUT and preloaded. Empty
    (and one line on stdout saying why) where no C compiler is found or the build fails."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("==> gpu-check: no C compiler (cc, gcc): a crashing test leaves its Python frames only", flush=True)
        return {}
    os.makedirs(out, exist_ok=True)
    library = os.path.join(out, "native_backtrace.so")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", library,
                            os.path.join(ROOT, "benchmarks", "native_backtrace.c")], capture_output=True, text=True)
    if built.returncode != 0:
        print(f"==> gpu-check: native_backtrace.c did not build ({built.stderr.strip()[:300]}): a crashing test "
              "leaves its Python frames only", flush=True)
        return {}
    frames = os.path.join(out, "native_backtrace.txt")
    if os.path.exists(frames):
        os.remove(frames)  # (an earlier run's crashes)
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)
    return {"LD_PRELOAD": preload, "RNN_FUSED_NATIVE_BACKTRACE": frames}


# A frame of backtrace_symbols_fd: "path(symbol+0xoffset) [0xaddress]" or "path(+0xoffset) [...]".
_FRAME = re.compile(r"^(?P<path>[^(\s]+)\((?P<symbol>[^+)]*)\+(?P<offset>0x[0-9a-f]+)\)")


def resolve_extension_frames(text: str, extension: str) -> str:
    """`text` with each frame of the file `extension` (the built rnn_fused/_C*.so) followed by
    its function and source line (addr2line, from the debug information -g leaves there);
    frames given by symbol+offset are resolved through the symbol's address (nm). Unchanged
    where addr2line or nm is missing."""
    addr2line, nm = shutil.which("addr2line"), shutil.which("nm")
    if addr2line is None or not os.path.isfile(extension):
        return text
    symbols = {}
    if nm is not None:
        listing = subprocess.run([nm, "--defined-only", extension], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3:
                symbols[parts[2]] = int(parts[0], 16)
    lines = []
    for line in text.splitlines():
        lines.append(line)
        frame = _FRAME.match(line.strip())
        if frame is None or os.path.realpath(frame["path"]) != os.path.realpath(extension):
            continue
        offset = int(frame["offset"], 16)
        if frame["symbol"]:
            if frame["symbol"] not in symbols:
                continue
            offset += symbols[frame["symbol"]]
        where = subprocess.run([addr2line, "-C", "-f", "-i", "-e", extension, hex(offset)],
                               capture_output=True, text=True).stdout.split("\n")
        lines += [f"    {w}" for w in where if w.strip()]
    return "\n".join(lines) + "\n"


# Raises a C++ error (TORCH_CHECK_VALUE in the extension's own op) in a fresh interpreter, with CUDA
# initialised first or not: the GPU tests of 2026-11-30 died of SIGSEGV in such raises.
_RAISE_SCRIPT = """
import sys, torch
if sys.argv[1] == "cuda":
    torch.cuda.init()
    torch.zeros(1, device="cuda")
import rnn_fused
try:
    torch.ops.rnn_fused.cpu_loop_team(-1, 1, 1)
except ValueError as error:
    print("raised ValueError:", str(error).splitlines()[0])
"""


def _glibcxx_versions(path: str) -> str:
    """The highest GLIBCXX_3.4.N symbol version named in a shared library (needed or provided)."""
    try:
        with open(path, "rb") as f:
            found = {int(m) for m in re.findall(rb"GLIBCXX_3\.4\.(\d+)", f.read())}
    except OSError as error:
        return f"unreadable ({error})"
    return f"up to GLIBCXX_3.4.{max(found)}" if found else "no GLIBCXX versions"


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not run: {error}"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0] if lines else f"no output (exit status {done.returncode})"


def toolchain_report(python: str) -> str:
    """What the extension was built with and what it runs against, for the SIGSEGV of
    2026-11-30 (docs/benchmarks.md): the compilers, torch's C++ ABI against the flag the build
    used, the libstdc++ the process loads against the GLIBCXX versions the extension needs, and a
    C++ error raised in a fresh interpreter with CUDA initialised first and without."""
    import torch

    lines = [f"python: {sys.version.split()[0]} ({python})",
             f"torch: {torch.__version__}, CUDA {torch.version.cuda}, "
             f"built with the C++11 ABI: {torch.compiled_with_cxx11_abi()}",
             f"c++: {_first_line([shutil.which('c++') or 'c++', '--version'])}"]
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    nvcc_out = subprocess.run([nvcc, "--version"], capture_output=True, text=True) if os.path.isfile(nvcc) else None
    lines.append(f"nvcc: {nvcc_out.stdout.strip().splitlines()[-1] if nvcc_out and nvcc_out.stdout.strip() else 'not found at ' + nvcc}")
    for ninja in sorted(glob.glob(os.path.join(ROOT, "build", "temp*", "build.ninja"))):
        text = open(ninja).read()
        flags = sorted(set(re.findall(r"-D_GLIBCXX_USE_CXX11_ABI=\d", text)))
        lines.append(f"build flags ({os.path.relpath(ninja, ROOT)}): {', '.join(flags) or 'no -D_GLIBCXX_USE_CXX11_ABI'}")
    extension = next(iter(glob.glob(os.path.join(ROOT, "rnn_fused", "_C*.so"))), "")
    if extension:
        lines.append(f"extension needs: {_glibcxx_versions(extension)}")
        ldd = subprocess.run(["ldd", extension], capture_output=True, text=True).stdout if shutil.which("ldd") else ""
        resolved = [line.strip() for line in ldd.splitlines() if "libstdc++" in line]
        lines.append(f"extension resolves: {resolved[0] if resolved else 'libstdc++ not listed by ldd'}")
    with open("/proc/self/maps") as f:
        loaded = sorted({line.split()[-1] for line in f if "libstdc++" in line})
    for library in loaded:
        lines.append(f"this process (torch imported) loaded: {library}, {_glibcxx_versions(library)}")
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    for mode in ("cpu", "cuda"):
        try:
            done = subprocess.run([python, "-c", _RAISE_SCRIPT, mode], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": path}, cwd=ROOT)
            outcome = (done.stdout.strip().splitlines() or [""])[-1] if done.returncode == 0 else \
                f"exit status {done.returncode} ({'signal ' + str(-done.returncode) if done.returncode < 0 else 'error'}): " \
                f"{(done.stderr.strip().splitlines() or [''])[-1][:300]}"
        except subprocess.TimeoutExpired:
            outcome = "timed out after 120 s"
        lines.append(f"a C++ error raised {'after CUDA initialised' if mode == 'cuda' else 'without CUDA'}: {outcome}")
    return "\n".join(lines) + "\n"


def gpu_check_stages(python: str, out: str, arch: str | None, budget_s: float,
                     min_seconds: float | None = None) -> list[Stage]:
    """The five stages of the check: build, GPU tests, benchmark, the cost model refitted to
    the benchmark's measurements (fit_model.md beside its report), and the kernels'
    shared-memory counters (smem_counters.md). Without a GPU
    architecture the build is not attempted (it would build CPU-only and the GPU tests would
    skip): the stage fails and says why."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    build = ([python, "setup.py", "-q", "build_ext", "--inplace"] if arch is not None
             else [python, "-c", "import sys; sys.exit('build: no CUDA device, so no architecture to build for')"])
    return [
        Stage("build", build, {"TORCH_CUDA_ARCH_LIST": arch or "", "MAX_JOBS": str(cores()),
                               "RNN_FUSED_CUDA": "1", "RNN_FUSED_SELFTESTS": "1"}, BUILD_TIMEOUT_S),
        Stage("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-ra",
                        *crash_isolation(), f"--junitxml={os.path.join(out, 'tests.xml')}", *TEST_FILES],
              {"PYTHONPATH": path}, TESTS_TIMEOUT_S),
        Stage("benchmark", [python, "-m", "rnn_fused", "gpu-check", "--out", out, "--budget-s", str(int(budget_s)),
                            *([] if min_seconds is None else ["--min-seconds", str(min_seconds)])],
              {"PYTHONPATH": path}, budget_s + BENCHMARK_SLACK_S),
        Stage("fit-model", [python, "-m", "rnn_fused", "fit-model", os.path.join(out, "gpu_check.json"), "--out", out],
              {"PYTHONPATH": path}, FIT_TIMEOUT_S),
        Stage("smem-counters", [python, os.path.join(ROOT, "benchmarks", "smem_counters.py"), "--out", out],
              {"PYTHONPATH": path}, SMEM_COUNTERS_TIMEOUT_S),
    ]


def select_stages(stages: list[Stage], names: str) -> list[Stage]:
    """The stages named in `names` (comma-separated), in that order. ValueError for an unknown
    or repeated name, or none."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    by_name = {stage.name: stage for stage in stages}
    unknown = [name for name in chosen if name not in by_name]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"--stages {names!r}: expected distinct names among {', '.join(by_name)}"
                         + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return [by_name[name] for name in chosen]


def run_stage(stage: Stage, log_path: str, echo=sys.stdout) -> Stage:
    """Runs one stage in its own process group, copying its output to `echo` and the log;
    kills the group when the stage runs past its limit."""
    start = time.perf_counter()
    print(f"==> gpu-check stage {stage.name}: {' '.join(stage.argv)}", file=echo, flush=True)
    with open(log_path, "w") as log:
        try:
            process = subprocess.Popen(stage.argv, cwd=ROOT, env={**os.environ, **stage.env}, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        except OSError as error:
            stage.status = f"could not start: {error}"
            stage.last_line = str(error)
            log.write(stage.status + "\n")
            return stage
        last = [""]

        def copy_output():
            for line in process.stdout:
                echo.write(line)
                echo.flush()
                log.write(line)
                if line.strip():
                    last[0] = line.strip()

        reader = threading.Thread(target=copy_output, daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=stage.timeout_s)
            stage.status = "passed" if code == 0 else f"failed (exit status {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the stage's own process group, started above
            process.wait()
            stage.status = f"timed out after {stage.timeout_s:.0f} s"
        reader.join(timeout=10)
        stage.last_line = last[0]
    stage.seconds = time.perf_counter() - start
    print(f"==> gpu-check stage {stage.name}: {stage.status} ({stage.seconds:.0f} s)", file=echo, flush=True)
    return stage


def summary(stages: list[Stage], device: str) -> str:
    lines = [f"# gpu-check stages: {device}", "", "| stage | status | seconds | last line of output |",
             "|---|---|---:|---|"]
    for s in stages:
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.last_line.replace('|', '/')[:200]} |")
    failed = [s.name for s in stages if not s.passed]
    lines += ["", f"FAILED: {', '.join(failed)}" if failed else "All stages passed."]
    return "\n".join(lines) + "\n"


def run_stages(stages: list[Stage], out: str, device: str, echo=sys.stdout) -> int:
    os.makedirs(out, exist_ok=True)
    for stage in stages:
        run_stage(stage, os.path.join(out, f"{stage.name}.log"), echo)
    text = summary(stages, device)
    with open(os.path.join(out, "stages.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "stages.json"), "w") as f:
        json.dump({"device": device, "stages": [asdict(s) for s in stages]}, f, indent=2)
    print(text, file=echo, flush=True)
    return 0 if all(s.passed for s in stages) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_out", help="output directory (default gpu_out)")
    parser.add_argument("--budget-s", type=float, default=BENCHMARK_BUDGET_S,
                        help=f"the benchmark's time budget (default {BENCHMARK_BUDGET_S})")
    parser.add_argument("--min-seconds", type=float, default=BENCHMARK_MIN_SECONDS,
                        help=f"the benchmark's minimum seconds per measurement (default {BENCHMARK_MIN_SECONDS})")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES),
                        help=f"the stages to run, comma-separated, in that order (default {','.join(STAGE_NAMES)})")
    args = parser.parse_args(argv)
    try:
        select_stages(gpu_check_stages(sys.executable, "", "0.0", args.budget_s), args.stages)
    except ValueError as error:
        parser.error(str(error))
    out = os.path.abspath(args.out)
    arch, device = cuda_arch_list()
    print(f"==> gpu-check on {device}; TORCH_CUDA_ARCH_LIST={arch}; MAX_JOBS={cores()}", flush=True)
    stages = select_stages(gpu_check_stages(sys.executable, out, arch, args.budget_s, args.min_seconds), args.stages)
    for stage in stages:
        if stage.name == "tests":
            stage.env.update(native_backtrace_env(out))
    status = run_stages(stages, out, device)
    try:
        report = toolchain_report(sys.executable)
    except Exception as error:  # the report is a diagnosis: its own failure must not hide the stages'
        report = f"toolchain report failed: {type(error).__name__}: {error}\n"
    with open(os.path.join(out, "toolchain.txt"), "w") as f:
        f.write(report)
    print(report, flush=True)
    crashes = os.path.join(out, "native_backtrace.txt")
    if os.path.isfile(crashes) and os.path.getsize(crashes) > 0:
        extension = next(iter(glob.glob(os.path.join(ROOT, "rnn_fused", "_C*.so"))), "")
        with open(crashes) as f:
            text = resolve_extension_frames(f.read(), extension)
        with open(crashes, "w") as f:
            f.write(text)
        print(f"==> gpu-check: a test process died of a signal; its native frames are in {crashes}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
