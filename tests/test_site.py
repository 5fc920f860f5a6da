"""The documentation site builds (``mkdocs build --strict``) and its pages work offline.

The site is built once for the module, as a reader's build is: the teaching notebooks with
their committed outputs (nothing is executed). Pages are opened from
``file://`` in headless Chromium with networking off (``mechlens.viz.browser``); a small
probe script added to a copy of each page records every resource that failed to load, every
fetch that failed, every console error and every image that did not decode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mechlens.viz.browser import find_chromium, headless_render

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))

pytest.importorskip("mkdocs")
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]

# Runs first in <head>: records failed loads (capture phase sees <img>, <script>, <link>
# errors), failed fetches and console errors, then the images' state once the page loaded.
_PROBE = r"""<script>
(function () {
  const seen = {failed: [], fetch: [], console: []};
  window.addEventListener("error", (e) => {
    const t = e.target;
    if (t && t !== window) seen.failed.push(t.src || t.href || t.outerHTML.slice(0, 80));
    else seen.console.push(String(e.message));
  }, true);
  const error = console.error;
  console.error = (...a) => { seen.console.push(a.map(String).join(" ")); error.apply(console, a); };
  const fetch0 = window.fetch;
  window.fetch = (...a) => fetch0(...a).catch((err) => { seen.fetch.push(String(a[0])); throw err; });
  window.addEventListener("load", () => setTimeout(() => {
    const imgs = Array.from(document.images);
    seen.images = imgs.length;
    seen.inline_png = imgs.filter((i) => i.src.startsWith("data:image/png")).length;
    seen.broken = imgs.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src.slice(0, 80));
    seen.png_heights = imgs.filter((i) => i.src.startsWith("data:image/png"))
      .map((i) => Math.round(i.getBoundingClientRect().height));
    seen.output_warnings = Array.from(document.querySelectorAll(".jp-OutputArea-output"))
      .map((e) => e.innerText).filter((t) => /Warning|it\/s\]/.test(t)).map((t) => t.slice(0, 120));
    document.documentElement.setAttribute("data-probe", JSON.stringify(seen));
  }, 500));
})();
</script>"""


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], capture_output=True, timeout=1200)
        path = find_chromium()
    if path is None:
        pytest.fail("the site test needs Chromium: bash scripts/install_chromium.sh (or set MECHLENS_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env.pop("MECHLENS_DOCS_NOTEBOOKS", None)  # the committed notebooks
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def _open(page: Path, chromium: str) -> tuple[dict, object]:
    """Open a probed copy of ``page`` (same folder, so relative links resolve) offline."""
    html = page.read_text(encoding="utf-8")
    probed = page.with_name(f"probe-{page.name}")
    probed.write_text(html.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    run = headless_render(probed, chromium=chromium, budget_ms=15_000)
    m = re.search(r'data-probe="([^"]*)"', run.dom)
    assert m, f"{page.name}: the probe did not report (the page never finished loading)"
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return probe, run


def _assert_clean(name: str, probe: dict, run) -> None:
    assert run.page_requests == [], f"{name} asked the network for {run.page_requests}"
    assert probe["failed"] == [], f"{name}: resources that did not load: {probe['failed']}"
    assert probe["fetch"] == [], f"{name}: failed fetches: {probe['fetch']}"
    assert probe["console"] == [], f"{name}: console errors: {probe['console']}"
    assert probe["broken"] == [], f"{name}: images that did not decode: {probe['broken']}"


def test_the_probe_sees_what_fails(chromium, tmp_path):
    """Control: a missing image, a CDN script and a console error are all reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><head></head><body><img src="missing.png">'
        '<script src="https://cdn.example.org/x.js"></script>'
        "<script>console.error('boom')</script></body></html>",
        encoding="utf-8",
    )
    probe, run = _open(page, chromium)
    assert any(u.endswith("missing.png") for u in probe["failed"])
    assert "https://cdn.example.org/x.js" in probe["failed"]
    assert [r.url for r in run.page_requests] == ["https://cdn.example.org/x.js"]
    assert probe["console"] == ["boom"] and len(probe["broken"]) == 1
    with pytest.raises(AssertionError):
        _assert_clean("bad.html", probe, run)


def test_the_site_has_every_page(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    for name in ["index.html", "patching.html", "api.html", "notebooks.html"]:
        assert name in pages
    for module in ["patching", "engine", "ablation", "lens", "circuits", "directions", "steering",
                   "dit", "viz", "data", "models", "results", "study", "scale", "baseline"]:
        assert f"reference/{module}.html" in pages
    # a guide named in a docstring is a link to it
    assert '<a href="../patching.html"><code>docs/patching.md</code></a>' in (
        site / "reference" / "patching.html").read_text(encoding="utf-8")
    for source in SOURCES:
        assert f"notebooks/{source.stem}.html" in pages
    # README links into docs/ were rewritten for the site
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="patching.html"' in index and 'href="docs/' not in index
    assert 'href="contributing.html"' in index and "contributing.html" in pages


def test_api_reference_page_renders_the_docstrings_offline(site, chromium):
    import mechlens.patching

    probe, run = _open(site / "reference" / "patching.html", chromium)
    _assert_clean("reference/patching.html", probe, run)
    documented = [n for n in mechlens.patching.__all__ if callable(getattr(mechlens.patching, n))]
    assert len(documented) >= 6
    for name in documented:  # every public function and class
        assert f'id="mechlens.patching.{name}"' in run.dom, f"{name} is not on the API page"
    # a docstring's text, with Sphinx roles reduced to code spans
    assert "Gradient approximation of" in run.dom
    assert ":func:" not in run.dom and ":class:" not in run.dom
    assert "md-sidebar" in run.dom  # the theme's JavaScript and CSS loaded


def test_notebook_pages_show_their_figures_offline(site, chromium, notebook_tools):
    from test_notebooks import MIN_FIGURES

    pending = notebook_tools.PENDING
    for source in SOURCES:
        name = f"notebooks/{source.stem}.html"
        probe, run = _open(site / "notebooks" / f"{source.stem}.html", chromium)
        _assert_clean(name, probe, run)
        if source.stem in pending:  # committed without a current full run: no outputs to check yet
            continue
        want = MIN_FIGURES.get(source.name[:2], 1)
        assert probe["inline_png"] >= want, f"{name} shows {probe['inline_png']} figures, expected {want}"
        assert "Traceback" not in run.dom
        # the committed outputs hold results only: no warnings, no progress bars
        assert probe["output_warnings"] == [], f"{name}: {probe['output_warnings']}"
        # every figure readable at page width
        assert min(probe["png_heights"]) >= 300, f"{name}: figure heights {probe['png_heights']} px"


def test_home_page_images_load_offline(site, chromium):
    probe, run = _open(site / "index.html", chromium)
    _assert_clean("index.html", probe, run)
    assert probe["images"] >= 1  # the README's figure from the main job's report
