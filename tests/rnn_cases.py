"""The test cases' configurations: RNNCase and layer_args live in rnn_fused.tools.testing (rnn-fused
check draws from them too); the tests import them from here."""

from rnn_fused.tools.testing import RNNCase, layer_args  # noqa: F401

# The GPU kernels' recurrence paths the emulated backend is tested on (rnn_fused.plan).
EMULATED_PATHS = ("block", "cluster", "grid", "stepwise")
