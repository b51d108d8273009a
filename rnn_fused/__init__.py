"""rnn_fused: fused forward and BPTT kernels for Elman RNNs, a drop-in for torch.nn.RNN."""

from ._version import __version__
from . import _ops  # noqa: F401  (loads the extension, registers the fake kernels)
from .functional import rnn_layer
from .launch_plan import LaunchPlan, plan
from .modules import RNN
from .recording import GradientRecorder, clip_grad_norm_, record_gradients
from .reference import reference_layer
from .truncation import RandomTruncation, edge_scales

__all__ = ["RNN", "rnn_layer", "reference_layer", "plan", "LaunchPlan", "RandomTruncation", "edge_scales",
           "record_gradients", "GradientRecorder", "clip_grad_norm_"]


def __getattr__(name: str):
    # rnn_fused.simt (the emulator behind backend "emulated") loads on first use, so that
    # `import rnn_fused` stays the library alone.
    if name == "simt":
        import importlib

        return importlib.import_module(".simt", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
