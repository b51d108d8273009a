"""The workshop around the library: the command line (bench, check, demo), benchmarks, the
BPTT experiments, the tolerance rule and test helpers, and the SIMT self-test wrappers.
The core package (rnn_fused) never imports from here."""
