"""Every Python example of the documentation runs, and every relative link resolves:
README.md and docs/*.md.

Each fenced block whose info string starts with `python` is executed, in file order, on the
CPU. The blocks of one file share one namespace, fresh for each file: a block may use what
the blocks before it in the same file defined (as a reader running them in turn would), never
what another file defined. A block fails the test when it raises.

A block that must not run here (a script for torchrun, code that needs a GPU) is marked by
an HTML comment on the line right before its opening fence, which Markdown does not show:

    <!-- not run: the reason -->

The reason is required. Blocks in other languages (bash, text, cpp) are never run.

Links: every relative Markdown link names an existing file and, with #anchor, a heading of
that file (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->\s*$")


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run_reason: str | None


def code_blocks(path: str) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
        body = []
        j = i + 1
        indent = len(opening["indent"])
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            # As Markdown reads it: the opening fence's indentation is not part of the code.
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            j += 1
        assert j < len(lines), f"{path}:{i + 1}: code block never closed"
        language = info.split()[0].lower() if info else ""
        blocks.append(Block(path, i + 1, language, "\n".join(body) + "\n",
                            marker["reason"] if marker else None))
        i = j + 1
    return blocks


def python_blocks(path: str) -> list[Block]:
    return [b for b in code_blocks(path) if b.language == "python"]


def runnable_blocks(path: str) -> list[Block]:
    return [b for b in python_blocks(path) if b.not_run_reason is None]


def test_the_readme_has_python_examples_and_runs_them_all():
    assert len(python_blocks("README.md")) >= 4
    assert runnable_blocks("README.md") == python_blocks("README.md")


def test_the_ddp_script_is_marked_not_run():
    """docs/ddp.md's script initialises a process group from torchrun's environment."""
    blocks = python_blocks("docs/ddp.md")
    assert blocks and all(b.not_run_reason for b in blocks if "init_process_group" in b.code)


def test_every_not_run_marker_precedes_a_python_block():
    """A marker that drifted away from its block (or sits before a non-Python block) would
    silently stop applying; each one must sit right before a Python block's fence."""
    for path in DOCUMENTS:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().splitlines()
        fences = {b.line - 1: b for b in code_blocks(path)}
        for i, line in enumerate(lines):
            if line.lstrip().startswith("<!-- not run"):
                assert NOT_RUN.match(line), f"{path}:{i + 1}: write the marker as <!-- not run: the reason -->"
                block = fences.get(i + 1)
                assert block is not None and block.language == "python", (
                    f"{path}:{i + 1}: a not-run marker must be on the line right before a ```python fence")


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def anchors(path: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown file (outside code blocks)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    in_code = set()
    for block in code_blocks(path):  # the fences and the body lines between them (0-based)
        in_code.update(range(block.line - 1, block.line + block.code.count("\n") + 1))
    names = set()
    for i, line in enumerate(lines):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and i not in in_code:
            text = re.sub(r"[^\w\- ]", "", heading[1].replace("`", "").lower())
            names.add(text.replace(" ", "-"))
    return names


def test_relative_links_resolve():
    broken = []
    for path in DOCUMENTS:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        for match in LINK.finditer(text):
            target = match["target"]
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file_part, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if not os.path.exists(os.path.join(ROOT, linked)):
                broken.append(f"{path}: {target} (no file {linked})")
            elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
                broken.append(f"{path}: {target} (no heading #{anchor} in {linked})")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if runnable_blocks(p)])
def test_python_examples_run(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"doc_example_{os.path.basename(path)}"}
    for block in runnable_blocks(path):
        # Padded so that a traceback names the line of the Markdown file.
        code = compile("\n" * block.line + block.code, path, "exec")
        try:
            exec(code, namespace)
        except Exception as error:
            pytest.fail(f"the Python block at {path}:{block.line} raised {type(error).__name__}: {error}")
