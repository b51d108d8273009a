"""The resource report's spill check (benchmarks/nvcc_resource_usage.py, `make resource-usage`).

The report reads the build's compiled kernels with cuobjdump and calls a kernel spilled when its
machine code loads from local memory (LDL), since ptxas's own spill counts are not kept in the
object. Here a probe kernel that ptxas says spills, and one that it says does not, are compiled
(sm_80 and sm_90, 32 registers a thread) and the check must agree with ptxas on both.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "tests", "data", "spill_probe.cu")


def load_report_module():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # (its sibling sass_dot_loop is imported by name)
    spec = importlib.util.spec_from_file_location("nvcc_resource_usage",
                                                  os.path.join(REPO, "benchmarks", "nvcc_resource_usage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_module = load_report_module()
NVCC = shutil.which("nvcc")
CUOBJDUMP = report_module.sass_dot_loop.find_cuobjdump()
needs_tools = pytest.mark.skipif(NVCC is None or CUOBJDUMP is None,
                                 reason=f"needs nvcc and cuobjdump (nvcc: {NVCC}, cuobjdump: {CUOBJDUMP})")


def ptxas_spill_loads(output: str) -> dict[tuple[str, str], int]:
    """(arch, mangled name) -> ptxas -v's spill loads."""
    found, current = {}, None
    for line in output.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if entry:
            current = (entry.group(2), entry.group(1))
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill and current:
            found[current] = int(spill.group(2))
            current = None
    return found


@needs_tools
def test_spill_check_agrees_with_ptxas(tmp_path):
    object_file = str(tmp_path / "spill_probe.o")
    command = [NVCC, "-c", PROBE, "-o", object_file, "-maxrregcount=32", "-Xptxas=-v"]
    for arch in report_module.ARCHS:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    compiled = subprocess.run(command, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    by_ptxas = ptxas_spill_loads(compiled.stdout + compiled.stderr)
    assert report_module.missing_archs(CUOBJDUMP, object_file) == []

    usage = report_module.resource_usage(CUOBJDUMP, object_file)
    local_memory: dict = {}
    listing = subprocess.run([CUOBJDUMP, "-sass", object_file], capture_output=True, text=True, check=True).stdout
    lines = list(report_module.with_local_memory_counts(listing.splitlines(), local_memory))
    assert len(lines) == len(listing.splitlines())  # (passed on unchanged)
    report, spills = report_module.report_lines(usage, local_memory, kernels=("probe_",))

    assert set(usage) == set(by_ptxas) and len(by_ptxas) == 2 * len(report_module.ARCHS)
    for (arch, name), loads in by_ptxas.items():
        assert (loads > 0) == ("spilling" in name)  # (the probe still does what it is for)
        assert (local_memory[(arch, name)]["LDL"] > 0) == (loads > 0), (arch, name)
        assert usage[(arch, name)]["REG"] <= 32
    assert sorted(line.split()[0] for line in spills) == sorted(f"sm_{arch}" for arch in report_module.ARCHS)
    assert all("probe_spilling" in line for line in spills)
    assert sum(line.startswith("sm_") for line in report) == len(by_ptxas)
    assert "Used" in report[1] and "local loads (LDL)" in report[1]


def test_report_reads_an_up_to_date_build_only(tmp_path, monkeypatch):
    """built_object: None without an object; the build's object where it is newer than every
    file its compile read (as ninja's dependency log lists them); None once one of them is newer
    or gone."""
    monkeypatch.setattr(report_module, "ROOT", str(tmp_path))
    build_dir = os.path.join(str(tmp_path), "build",
                             f"temp.{report_module.sysconfig.get_platform()}-{sys.implementation.cache_tag}")
    object_file = os.path.join(build_dir, "csrc", "cuda", "elman_cuda.o")
    inputs = [str(tmp_path / "elman_cuda.cu"), str(tmp_path / "kernel.cuh")]
    assert report_module.built_object() is None

    def ninja_deps(command, capture_output, text):
        assert command[1:] == ["-C", build_dir, "-t", "deps", object_file]
        out = f"{object_file}: #deps {len(inputs)}, deps mtime 1 (VALID)\n" + "".join(f"    {p}\n" for p in inputs)
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(report_module.subprocess, "run", ninja_deps)
    os.makedirs(os.path.dirname(object_file))
    for path, stamp in ((inputs[0], 100), (inputs[1], 200), (object_file, 300)):
        open(path, "w").close()
        os.utime(path, (stamp, stamp))
    assert report_module.built_object() == object_file
    os.utime(inputs[1], (400, 400))
    assert report_module.built_object() is None
    os.utime(inputs[1], (200, 200))
    assert report_module.built_object() == object_file
    os.remove(inputs[0])
    assert report_module.built_object() is None
