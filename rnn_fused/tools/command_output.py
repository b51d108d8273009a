"""What every `rnn-fused` command writes: a progress bar on stderr, JSON results and PNG
figures in the output directory. tqdm and matplotlib are the `cli` extra, imported here
only when a command runs."""

from __future__ import annotations

import json
import os
import sys


def progress_bar(total: int, description: str):
    """A tqdm bar on stderr (stdout carries the tables)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, dynamic_ncols=True)


def write_json(directory: str, name: str, results) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    return path


def write_text(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def figure(*, ncols: int = 1, width: float = 7.0, height: float = 4.0):
    """(figure, axes) drawn off-screen (Agg): the commands run on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height))


def save_figure(fig, directory: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(directory, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
