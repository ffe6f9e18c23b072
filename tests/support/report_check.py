"""A report as a new user sees it, checked from its HTML (issue 14).

Headless Chromium is not installable on this offline machine, so the page is read with the standard
library's html.parser instead of a browser: what a reader sees is the text outside <style>/<script>, the
<title>, and the images, whose sources must resolve to a file beside index.html (or be data: URIs). A
browser would additionally catch layout and script errors; lineside's reports have no script.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

MAX_TITLE_CHARS = 80
# a dict or JSON object printed as text: {"key": or {'key':  (and the JSON of a list of objects)
_DUMP = re.compile(r"[{\[]\s*\{?\s*[\"'][^\"']{1,80}[\"']\s*:")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.texts: list[str] = []
        self.imgs: list[str] = []
        self.classes: set[str] = set()
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.classes.update((a.get("class") or "").split())
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag not in ("img", "meta", "br", "hr", "link", "input"):
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        if "title" in self._stack:
            self.title += data
        elif not ({"style", "script"} & set(self._stack)) and data.strip():
            self.texts.append(data)


def check_report_page(index: str | Path, *, confusion: bool = True) -> _Page:
    """Assert what a new user must get from the report at ``index``; returns the parsed page."""
    index = Path(index)
    page = _Page()
    page.feed(index.read_text())
    title = page.title.strip()
    assert title and len(title) < MAX_TITLE_CHARS, f"title of {len(title)} chars: {title[:120]!r}"
    for t in page.texts:
        assert not _DUMP.search(t), f"raw dict/JSON on the page: {t[:200]!r}"
    assert page.imgs, "no figure on the page"
    for src in page.imgs:
        assert src.startswith("data:") or (index.parent / src).is_file(), f"<img src={src!r}> does not resolve"
    assert "provenance" in page.classes, "no provenance header"
    prov = " ".join(page.texts)
    assert "lineside " in prov and "written " in prov, "provenance header lacks the version or the date"
    if confusion:
        assert "confusion" in page.classes, "no confusion matrix"
    return page
