"""`python -m rnn_fused`: the command line (rnn_fused/tools/cli.py), also installed as `rnn-fused`."""

import sys

from .tools.cli import main

sys.exit(main())
