"""What every `rnn-fused` command writes: a progress bar on stderr, JSON results and PNG
figures in the output directory. tqdm and matplotlib are the `cli` extra, imported here
only when a command runs.

Every command's run() calls prepare_output(out) before doing any work, so that a missing
package or an unusable output directory is reported at once (a UsageError, exit status 2)
instead of after minutes of measurements."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile

CLI_PACKAGES = ("tqdm", "matplotlib")
CLI_INSTALL = 'pip install tqdm matplotlib (or pip install "rnn_fused[cli]")'


class UsageError(Exception):
    """The command was called in a way it cannot run: a bad argument, an output directory
    that cannot be written, a missing optional package. The command line prints the message
    as one line and exits with status 2."""


def require_cli_packages() -> None:
    missing = []
    for name in CLI_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"the optional package{'s' if len(missing) > 1 else ''} {' and '.join(missing)} "
                         f"(progress bars and figures) {'are' if len(missing) > 1 else 'is'} not installed; "
                         f"install with: {CLI_INSTALL}")


def output_directory(path: str) -> str:
    """Creates `path` if needed and checks that a file can be written there (a probe file,
    not os.access: root passes access checks on read-only file systems and in /proc)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"--out {path!r} is not a writable directory: {error.strerror or error}") from None
    return path


def prepare_output(out: str) -> str:
    """What every command checks before it starts working: the optional packages it draws
    with, and its output directory (created here)."""
    require_cli_packages()
    return output_directory(out)


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
    # The tight bounding box keeps long tick labels inside the canvas.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown_table(columns: list[str], rows: list[list[str]], numeric: range) -> list[str]:
    """The lines of a Markdown table: `columns` headings, one line per row of cells; the
    columns whose index is in `numeric` are right-aligned (numbers)."""
    align = ["---:" if i in numeric else "---" for i in range(len(columns))]
    return ["| " + " | ".join(cells) + " |" for cells in [columns, align, *rows]]
