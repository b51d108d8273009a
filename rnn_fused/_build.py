"""Loads the compiled extension rnn_fused._C, or says how to build it."""

try:
    from . import _C  # noqa: F401  (registers torch.ops.rnn_fused and torch.ops.rnn_fused_simt)
except ImportError as error:
    raise ImportError(
        f"rnn_fused: the compiled extension rnn_fused._C could not be loaded ({error}). In a source "
        "checkout, build it with `make build` (or `python setup.py build_ext --inplace`); to install, "
        "run `pip install --no-build-isolation .` with torch already installed. See the README's "
        "install section for the prerequisites (a C++20 compiler with OpenMP; the CUDA toolkit for GPU "
        "kernels).") from error
