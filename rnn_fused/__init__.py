"""rnn_fused: fused forward and BPTT kernels for Elman RNNs, a drop-in for torch.nn.RNN."""

from . import _ops  # noqa: F401  (loads the extension, registers ops and fake kernels)
from .functional import rnn_layer
from .launch_plan import LaunchPlan, plan
from .modules import RNN
from .recording import GradientRecorder, clip_grad_norm_, record_gradients
from .reference import reference_layer
from .truncation import RandomTruncation, edge_scales
from . import simt  # noqa: F401  (SIMT emulator controls and self-tests)

__all__ = ["RNN", "rnn_layer", "reference_layer", "plan", "LaunchPlan", "RandomTruncation", "edge_scales",
           "record_gradients", "GradientRecorder", "clip_grad_norm_"]
