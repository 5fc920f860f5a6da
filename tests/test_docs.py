"""Every ```python block in README.md and docs/*.md runs, so an example cannot rot.

Each file's blocks run in order in one namespace (a later block may use an earlier one's
names), in a temporary working directory, with the session's smollm2-135m standing in for
``load_model("smollm2-135m")`` (one model for every block; the test checks its weights are
unchanged afterwards). Two HTML comments, invisible on the rendered page, steer the test;
they must sit right before the block:

* ``<!-- skip: REASON -->``: the block does not run (e.g. it needs the Hugging Face hub).
* ``<!-- small: `OLD` -> `NEW`; `OLD2` -> `NEW2` -->``: the test replaces OLD with NEW in
  the block (smaller settings for a slow example); each OLD must occur in the block.

A ```text block right after a ```python block is that block's output: the test compares
what the block prints with it, text exactly (up to white space) and numbers to the printed
precision (one unit in the last printed decimal; whole numbers exactly). That is how the
numbers the README quotes from its examples stay true.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

import mechlens
import mechlens.models

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_DIRECTIVE = re.compile(r"<!--\s*(skip|small):\s*(.*?)\s*-->\s*\Z", re.S)
_REPLACEMENT = re.compile(r"`([^`]+)`\s*->\s*`([^`]*)`")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    code: str
    skip: str | None = None
    small: list[tuple[str, str]] = field(default_factory=list)
    output: str | None = None

    @property
    def where(self) -> str:
        name = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{name}:{self.line}"

    def source(self) -> str:
        code = self.code
        for old, new in self.small:
            assert old in code, f"{self.where}: small-settings text {old!r} is not in the block"
            code = code.replace(old, new)
        return code


def blocks(path: Path) -> list[Block]:
    """The ```python blocks of a markdown file, with their directives and outputs."""
    text = path.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    found = []
    for i, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        before = text[fences[i - 1].end() if i else 0 : m.start()].rstrip()
        block = Block(path, text.count("\n", 0, m.start()) + 1, m.group(2))
        if d := _DIRECTIVE.search(before):
            kind, arg = d.groups()
            if kind == "skip":
                assert arg, f"{block.where}: say why the block is skipped"
                block.skip = arg
            else:
                block.small = _REPLACEMENT.findall(arg)
                assert block.small, f"{block.where}: no `OLD` -> `NEW` pairs in {arg!r}"
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        if nxt is not None and nxt.group(1) == "text" and not text[m.end() : nxt.start()].strip():
            block.output = nxt.group(2)
        found.append(block)
    return found


def check_output(printed: str, expected: str, where: str) -> None:
    """``printed`` matches ``expected``: text up to white space, numbers to printed precision."""
    got_text, want_text = (" ".join(_NUMBER.sub("#", s).split()) for s in (printed, expected))
    assert got_text == want_text, f"{where} printed:\n{printed}\nthe doc shows:\n{expected}"
    for got, want in zip(_NUMBER.findall(printed), _NUMBER.findall(expected)):
        decimals = len(want.split(".")[1].split("e")[0].split("E")[0]) if "." in want else 0
        if decimals == 0 and "e" not in want.lower():
            ok = got == want
        else:
            ulp = 10.0 ** -decimals * (10.0 ** int(want.lower().split("e")[1]) if "e" in want.lower() else 1)
            ok = abs(float(got) - float(want)) <= ulp * 1.0001
        assert ok, f"{where} printed {got} where the doc shows {want}:\n{printed}"


DOC_FILES = [p for p in DOCS if blocks(p)]


def test_the_parser_reads_directives_and_outputs(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n\n<!-- skip: needs the hub -->\n```python\nload('gpt2')\n```\n\n"
        "<!-- small: `steps=300` -> `steps=2`; `n=8` -> `n=2` -->\n```python\nf(steps=300, n=8)\n```\n\n"
        "```text\nloss 0.25 after 2 steps\n```\n\n```bash\nls\n```\n```python\nprint(1)\n```\n",
        encoding="utf-8",
    )
    a, b, c = blocks(doc)
    assert a.skip == "needs the hub" and a.code == "load('gpt2')\n" and a.line == 4
    assert b.small == [("steps=300", "steps=2"), ("n=8", "n=2")] and b.output == "loss 0.25 after 2 steps\n"
    assert c.output is None and c.skip is None and not c.small
    assert b.source() == "f(steps=2, n=2)\n"
    b.small = [("steps=9", "steps=2")]
    with pytest.raises(AssertionError, match="not in the block"):
        b.source()


def test_output_check_uses_the_printed_precision():
    check_output("LD 1.17  acc 0.95\n", "LD 1.17 acc 0.95\n", "x")
    check_output("LD 1.18 acc 0.95", "LD 1.17 acc 0.95", "x")  # one unit in the last place
    check_output("n=22 p 3.1e-05", "n=22 p 3.0e-05", "x")
    for printed, doc in [
        ("LD 1.19 acc 0.95", "LD 1.17 acc 0.95"),  # two units off
        ("LD 1.17 acc 0.95 extra", "LD 1.17 acc 0.95"),  # text differs
        ("n 23 acc 0.95", "n 22 acc 0.95"),  # whole numbers exactly
        ("n=22 p 3.3e-05", "n=22 p 3.0e-05"),
    ]:
        with pytest.raises(AssertionError):
            check_output(printed, doc, "x")


def _fingerprint(model) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([p.detach().double().sum() for p in model.parameters()])


@pytest.mark.docs
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_code_blocks_run(path, smollm2, tmp_path, monkeypatch):
    def load_model(name, *args, **kwargs):
        if isinstance(name, str) and name.lower() == mechlens.models.OFFLINE_MODEL:
            return smollm2
        pytest.fail(f"a block in {path.name} loads {name!r}: mark it <!-- skip: needs the hub -->")

    monkeypatch.setattr(mechlens, "load_model", load_model)
    monkeypatch.setattr(mechlens.models, "load_model", load_model)
    monkeypatch.chdir(tmp_path)  # blocks write out/..., runs/...
    monkeypatch.setenv("MECHLENS_CACHE", str(tmp_path / "cache"))  # e.g. the DIT family cache
    before = _fingerprint(smollm2)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    try:
        for block in blocks(path):
            if block.skip:
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block.source(), block.where, "exec"), namespace)
            ran += 1
            if block.output is not None:
                check_output(out.getvalue(), block.output, block.where)
            plt.close("all")
    finally:
        plt.close("all")
    assert ran, f"every block of {path.name} is skipped"
    assert torch.equal(_fingerprint(smollm2), before), f"the blocks of {path.name} changed the model's weights"
