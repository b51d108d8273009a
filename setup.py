"""Build of the rnn_fused._C extension.

C++ sources under csrc/ (except csrc/cuda) are always compiled. CUDA sources under
csrc/cuda/*.cu are compiled by nvcc whenever a CUDA toolkit is found, GPU or not,
unless RNN_FUSED_CUDA=0. RNN_FUSED_SELFTESTS=1 adds the SIMT emulator's self-test kernels
(csrc/simt/selftest/, op namespace rnn_fused_selftest), which only the test suite uses.
The benchmark's allocation meter (rnn_fused/tools/malloc_meter.c) is built alongside, as
the plain shared library rnn_fused/tools/libmalloc_meter.so (BuildExtensionAndMeter).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def find_cuda_home():
    """Toolkit root: $CUDA_HOME, else the TOP= line of `nvcc --dryrun`.

    nvcc may be a wrapper script outside the toolkit, so the parent of its folder
    (torch's own guess) is not reliable.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"rnn_fused: could not run nvcc --dryrun ({exc}); building without CUDA", file=sys.stderr)
        return None
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    return os.path.realpath(match.group(1)) if match else None


def want_cuda():
    flag = os.environ.get("RNN_FUSED_CUDA", "auto").lower()
    if flag in ("0", "off", "false", "no"):
        return None
    cuda_home = find_cuda_home()
    if cuda_home is None and flag in ("1", "on", "true", "yes"):
        raise RuntimeError("RNN_FUSED_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
    return cuda_home


CUDA_HOME = want_cuda()
if CUDA_HOME is not None:
    # torch.utils.cpp_extension reads CUDA_HOME at import time.
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def wheel_cuda_includes():
    """Headers (cublas_v2.h, cusparse.h, ...) shipped in the nvidia cu13 wheels."""
    dirs = []
    for entry in sys.path:
        candidate = os.path.join(entry, "nvidia", "cu13", "include")
        if os.path.isdir(candidate) and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def want_selftests():
    return os.environ.get("RNN_FUSED_SELFTESTS", "0") == "1"


def sources():
    cpp = glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/simt/*.cpp")
    cu = glob.glob("csrc/cuda/*.cu")
    if want_selftests():
        cpp += glob.glob("csrc/simt/selftest/*.cpp")
        cu += glob.glob("csrc/simt/selftest/*.cu")
    return sorted(cpp), sorted(cu) if CUDA_HOME is not None else []


def extension():
    cpp, cu = sources()
    debug = os.environ.get("RNN_FUSED_DEBUG", "0") == "1"
    sanitize = os.environ.get("RNN_FUSED_SANITIZE", "0") == "1"
    opt = ["-O0", "-g"] if debug or sanitize else ["-O3"]
    # No trapping math, as torch itself: lets the compiler vectorize branch-free selects.
    cxx = ["-std=c++20", *opt, "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    link = ["-fopenmp"]
    if sanitize:
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link += ["-fsanitize=address"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if cu:
        include_dirs += wheel_cuda_includes()
        # --split-compile=0: cicc's optimiser and ptxas work on the ~400 kernels of elman_cuda.cu on
        # every core (sm_90 alone: 383 s of cicc + ptxas on one core here, 261 s on two).
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-warn-spills",
                "--split-compile=0"]
        return CUDAExtension(
            "rnn_fused._C", cpp + cu, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension("rnn_fused._C", cpp, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx}, extra_link_args=link)


class BuildExtensionAndMeter(BuildExtension.with_options(use_ninja=True)):
    """torch's build_ext, then the benchmark's allocation meter (rnn_fused/tools/malloc_meter.c)
    as a plain shared library next to the benchmark, so that `rnn-fused bench` needs no
    compiler at run time. The meter replaces malloc under LD_PRELOAD: it is no Python module,
    hence no Extension (torch's build_ext would compile it as C++ with torch's flags)."""

    METER_SOURCE = "rnn_fused/tools/malloc_meter.c"
    METER_PACKAGE, METER_LIBRARY = "rnn_fused.tools", "libmalloc_meter.so"

    def finalize_options(self):
        super().finalize_options()
        if self.editable_mode:
            # `pip install -e .` compiles in a throw-away folder; the in-place build's folder
            # (`make build`) lets ninja reuse its objects instead of compiling everything twice.
            self.build_temp = os.path.join("build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")

    def _meter_path(self, package_root: str) -> str:
        return os.path.join(package_root, *self.METER_PACKAGE.split("."), self.METER_LIBRARY)

    def run(self):
        super().run()
        if not sys.platform.startswith("linux"):  # glibc's allocator entry points; the bench says it is missing
            return
        # setuptools provides distutils on Python >= 3.12 (imported above, it installs the shim).
        from distutils.ccompiler import new_compiler
        from distutils.errors import CCompilerError
        from distutils.sysconfig import customize_compiler

        compiler = new_compiler()
        customize_compiler(compiler)  # the C compiler and flags Python was built with ($CC overrides)
        built = self._meter_path(self.build_lib)
        try:
            objects = compiler.compile([self.METER_SOURCE], output_dir=self.build_temp, extra_postargs=["-O2"])
            compiler.link_shared_object(objects, built)
        except CCompilerError as error:
            # The meter only serves `rnn-fused bench`'s peak-memory columns, which then say
            # they were not measured; the library itself does not need it.
            print(f"rnn_fused: the allocation meter was not built ({error}); rnn-fused bench will report "
                  "peak memory as not measured", file=sys.stderr)
            return
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir(self.METER_PACKAGE)
            self.copy_file(built, os.path.join(package_dir, self.METER_LIBRARY))

    def get_outputs(self):
        meter = self._meter_path(self.build_lib)
        return super().get_outputs() + ([meter] if os.path.exists(meter) else [])


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionAndMeter},
)
