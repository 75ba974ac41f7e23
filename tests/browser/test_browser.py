"""Headless Chromium renders a visualization and the report offline (``-m browser``).

Each page is rendered twice: ``--screenshot`` (the PNG must not be blank: pixel variance and
non-white share) and ``--dump-dom`` after a virtual-time budget (every circuitsvis ``div`` must
hold the elements React rendered into it, and none may carry the error marker). A page without
the bundle is the negative control: the same check must fail there. Locally the tests skip
with a message when no Chromium is installed; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from shiftlens import InstructionPrompt, default_prompts
from shiftlens.viz import Visualization, attention_patterns, page, token_rows

pytestmark = pytest.mark.browser

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--hide-scrollbars", "--mute-audio")


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    msg = ("no Chromium found (looked for " + ", ".join(CANDIDATES) + "); install Debian's "
           "chromium (`apt-get install chromium`, done by .ci/run as root) to run the browser tests")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " - CI must run them")
    pytest.skip(msg)


def _chrome(binary: str, tmp: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def screenshot(binary: str, html: Path, png: Path, size: str = "1280,1600") -> np.ndarray:
    from PIL import Image

    r = _chrome(binary, html.parent, f"--window-size={size}", "--virtual-time-budget=8000",
                f"--screenshot={png}", html.resolve().as_uri())
    assert png.exists(), r.stderr.decode(errors="replace")[-2000:]
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)


def dump_dom(binary: str, html: Path) -> str:
    r = _chrome(binary, html.parent, "--virtual-time-budget=8000", "--dump-dom",
                html.resolve().as_uri())
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r.stdout.decode("utf-8", errors="replace")


class _Components(HTMLParser):
    """Collects every circuitsvis container div: its component, classes, and what is inside."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict] = []
        self.stack: list[dict | None] = []

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def _count(self, tag: str) -> None:
        for d in self.stack:
            if d is not None:
                d["elements"] += 1
                d["tags"].add(tag)

    def handle_startendtag(self, tag, attrs):
        self._count(tag)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._count(tag)
        if tag in self.VOID:
            return
        if tag == "div" and "sl-circuitsvis" in (a.get("class") or ""):
            d = {"component": a.get("data-component"), "class": a.get("class"), "elements": 0,
                 "tags": set(), "text": ""}
            self.found.append(d)
            self.stack.append(d)
        else:
            self.stack.append(None)

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for d in self.stack:
            if d is not None:
                d["text"] += data


def rendered_components(dom: str) -> list[dict]:
    p = _Components()
    p.feed(dom)
    return p.found


def assert_rendered(dom: str, expect: dict[str, int]) -> list[dict]:
    comps = rendered_components(dom)
    counts: dict[str, int] = {}
    for c in comps:
        counts[c["component"]] = counts.get(c["component"], 0) + 1
        assert "sl-cv-error" not in c["class"], c["text"][:300]
        assert c["elements"] > 0, f"{c['component']} rendered nothing"
    assert counts == expect
    return comps


def assert_not_blank(img: np.ndarray) -> None:
    assert img.std() > 15, f"page looks blank (pixel std {img.std():.1f})"
    nonwhite = (img.min(axis=2) < 235).mean()
    assert nonwhite > 0.02, f"only {nonwhite:.1%} of pixels are not white"


# ----------------------------------------------------------------------------- tests
SHORT = InstructionPrompt("Sort the words.\nInput: pear apple fig\nAnswer:",
                          instruction=["Sort the words."], context=["pear apple fig"],
                          reference=" apple fig pear", id="short-1", category="rewriting")


def test_attention_visualization_renders_offline(chromium, llama_pair, tmp_path):
    vis = attention_patterns(llama_pair, SHORT, layers=[1])
    html = vis.save(tmp_path / "attention.html")
    img = screenshot(chromium, html, tmp_path / "attention.png")
    assert_not_blank(img)
    comps = assert_rendered(dump_dom(chromium, html), {"AttentionHeads": 3})
    for c in comps:
        assert "Head Selector" in c["text"] and "L1H0" in c["text"]
    # the colourful head thumbnails / patterns are drawn: some pixels are strongly saturated
    sat = img.max(axis=2) - img.min(axis=2)
    assert (sat > 100).mean() > 0.001


def test_report_renders_offline(chromium, llama_pair, tmp_path):
    from shiftlens.report import build_report

    rep = build_report(llama_pair, [SHORT, *default_prompts()[:5]], tmp_path / "report",
                       lenses="attention,ffn", progress=False,
                       options={"concept_k": 8, "rotation_k": 4, "verb_words": 300})
    assert not rep.failed, [s.errors for s in rep.sections]
    img = screenshot(chromium, rep.html_path, tmp_path / "report.png", size="1280,3000")
    assert_not_blank(img)
    dom = dump_dom(chromium, rep.html_path)
    assert_rendered(dom, {"AttentionHeads": 3})
    assert "Key findings" in dom and dom.count('class="sl-fig"') >= 3
    # every embedded figure decoded: <img> elements with a natural size are laid out
    assert re.search(r'<img class="sl-fig" src="data:image/png;base64,', dom)


#: Widths the report must read at (issue 15): a laptop window and a narrow one (one column).
WIDTHS = (1400, 800)
_WIDTH_PROBE = ("<script>window.addEventListener('load', () => setTimeout(() => {"
                "document.title = 'sl-width ' + document.documentElement.scrollWidth + ' ' + "
                "window.innerWidth; }, 500));</script>")


@pytest.mark.parametrize("width", WIDTHS)
def test_report_fits_the_window(chromium, llama_pair, tmp_path, width):
    """The report at 1400 and 800 px: a screenshot that is not blank, and no horizontal
    scrolling (the page is no wider than the window; figures and tables wrap or shrink)."""
    from shiftlens.report import build_report

    rep = build_report(llama_pair, [SHORT, *default_prompts()[:3]], tmp_path / "report",
                       lenses="attention,ffn", progress=False,
                       options={"concept_k": 8, "rotation_k": 4, "verb_words": 300})
    img = screenshot(chromium, rep.html_path, tmp_path / f"report-{width}.png",
                     size=f"{width},2000")
    assert img.shape[1] == width
    assert_not_blank(img)
    probe = rep.html_path.with_name("probe.html")
    probe.write_text(rep.html_path.read_text().replace("</body>", _WIDTH_PROBE + "</body>"))
    dom = _chrome(chromium, probe.parent, f"--window-size={width},2000",
                  "--virtual-time-budget=8000", "--dump-dom", probe.resolve().as_uri())
    got = re.search(r"<title>sl-width (\d+) (\d+)</title>", dom.stdout.decode(errors="replace"))
    assert got, dom.stderr.decode(errors="replace")[-2000:]
    page_w, window_w = map(int, got.groups())
    assert window_w == width and page_w <= window_w, f"page {page_w} px wide in a {width} px window"


def test_token_colours_render_and_missing_bundle_is_detected(chromium, tmp_path):
    vis = token_rows(["Sort", " the", " words", "</s>"], {"density": [1.0, 0.1, 0.6, 0.0]})
    good = vis.save(tmp_path / "tokens.html")
    comps = assert_rendered(dump_dom(chromium, good), {"ColoredTokens": 1})
    assert "words" in comps[0]["text"] and "</s>" in comps[0]["text"]
    # negative control: the same component without the bundle must be reported, not pass
    bad = tmp_path / "no_bundle.html"
    bad.write_text(page("no bundle", Visualization.fragment(vis, include_js=False)))
    comps = rendered_components(dump_dom(chromium, bad))
    assert len(comps) == 1 and "sl-cv-error" in comps[0]["class"]
    with pytest.raises(AssertionError):
        assert_rendered(dump_dom(chromium, bad), {"ColoredTokens": 1})
