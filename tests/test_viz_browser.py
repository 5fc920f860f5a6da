"""The attention page renders in a real browser with the network off, and asks for nothing.

Debian's Chromium is installed by ``scripts/install_chromium.sh`` when absent (the test set-up
runs it); if it still cannot be had, the test fails and says so instead of being skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from mechlens.viz import attention
from mechlens.viz.browser import find_chromium, headless_render, visible_text

pytestmark = pytest.mark.subprocess  # starts headless Chromium (installed on first use)

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install_chromium.sh"


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=1200)
        path = find_chromium()
        if path is None:
            pytest.fail(
                "the browser test needs Chromium and scripts/install_chromium.sh could not install "
                f"it (exit {proc.returncode}):\n{proc.stderr[-2000:]}\n"
                "Install it with `apt-get install chromium`, or set MECHLENS_CHROMIUM to a binary."
            )
    return path


def _view_html(dom: str, uid: str, layer: int) -> str:
    """Inner HTML of one layer's view element, up to the next layer's section."""
    start = dom.index(f'id="{uid}-view-{layer}"')
    end = dom.find("<section", start)
    return dom[start : end if end >= 0 else len(dom)]


def test_attention_page_renders_offline(chromium, tiny_llama, tmp_path):
    view = attention(tiny_llama, "I thought this movie was good, I loved it.", layers=[0, 1])
    page = view.save_html(tmp_path / "attention.html")

    run = headless_render(page, chromium=chromium, screenshot=tmp_path / "attention.png")
    uid = re.search(r'id="(mechlens-attn-[0-9a-f]+)"', run.dom).group(1)
    text = visible_text(run.dom)
    # circuitsvis drew the first layer: head selector, one thumbnail per head, the zoomed head.
    assert "Head Selector (hover to view, click to lock)" in text
    assert [t for t in text if re.fullmatch(r"L\dH\d", t)][:4] == ["L0H0", "L0H1", "L0H2", "L0H3"]
    shown = _view_html(run.dom, uid, 0)
    assert shown.count("<canvas") >= tiny_llama.cfg.n_heads + 1
    # The other layer is drawn only when chosen.
    assert "<canvas" not in _view_html(run.dom, uid, 1)
    assert not any(t.startswith("L1H") for t in text)
    # Nothing but the file itself was requested by the page.
    assert run.page_requests == [], run.page_requests
    assert all(r.is_local or r.from_browser for r in run.requests)
    shot = mpimg.imread(tmp_path / "attention.png")
    assert shot.shape[:2] == (1400, 1100) and shot[..., :3].std() > 0.05  # not a blank page

    chosen = headless_render(page, chromium=chromium, fragment="layer-1")
    assert "L1H3" in visible_text(chosen.dom)
    assert _view_html(chosen.dom, uid, 1).count("<canvas") >= tiny_llama.cfg.n_heads + 1
    assert chosen.page_requests == []


def test_cdn_page_is_caught(chromium, tmp_path):
    """Control: circuitsvis' default (CDN) HTML neither renders offline nor escapes the check."""
    from circuitsvis.attention import attention_heads

    pattern = np.tril(np.ones((2, 3, 3))) / np.arange(1, 4)[:, None]
    cdn = attention_heads(pattern, ["a", "b", "c"]).cdn_src
    page = tmp_path / "cdn.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{cdn}</body></html>")
    run = headless_render(page, chromium=chromium)
    assert [r.url for r in run.page_requests if "unpkg.com" in r.url], run.requests
    assert "Head Selector (hover to view, click to lock)" not in visible_text(run.dom)


def test_install_script_is_idempotent(chromium):
    """With Chromium present, the script changes nothing and prints the binary."""
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert os.access(proc.stdout.strip(), os.X_OK)
    assert "apt-get" not in proc.stderr  # nothing was installed
