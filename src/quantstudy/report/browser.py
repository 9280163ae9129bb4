"""Open a report in headless Chromium, as a reader would, and check that every section is filled.

A section is filled when it has content and no "Not run in this study." placeholder; every
figure must have decoded (an image that fails to decode has naturalWidth 0), and every table
must have body rows. A full-page screenshot is saved beside the findings, so a person can
see what the check saw.

Chromium comes from the system (Debian: `apt-get install chromium`), driven by Playwright
(`pip install playwright`; its own browser download is never used: nothing is fetched).
Chromium's background services are switched off: on a machine without network they only
produce refused connections.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy.errors import QuantstudyError

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Runs in the page: per section, what a reader sees.
_PROBE = """() => [...document.querySelectorAll('section')].map(s => ({
  id: s.id,
  text: s.innerText.trim().length,
  missing: [...s.querySelectorAll('.missing')].map(m => m.innerText.trim()),
  images: [...s.querySelectorAll('img')].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                                   width: i.getBoundingClientRect().width})),
  tables: [...s.querySelectorAll('table')].map(t => t.querySelectorAll('tr').length - 1),
}))"""


@dataclass
class SectionView:
    id: str
    text_chars: int
    missing: list[str]
    images: int
    broken_images: list[str]
    table_rows: list[int]


@dataclass
class BrowserCheck:
    sections: list[SectionView]
    screenshot: Path
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_report(html: str | Path, screenshot: str | Path, expect: dict[str, dict] | None = None,
                 width: int = 1280) -> BrowserCheck:
    """Render `html` in headless Chromium, save a full-page PNG to `screenshot`, check sections.

    `expect` maps a section id to what it must at least hold: {"images": 1, "tables": 1}.
    Every section must have text and no placeholder unless `expect[id]` says {"missing": True}.
    """
    html, screenshot = Path(html).resolve(), Path(screenshot)
    if not html.is_file():
        raise QuantstudyError(f"no report at {html}")
    chromium = find_chromium()
    if chromium is None:
        raise QuantstudyError("no Chromium on this machine: apt-get install chromium (Debian) to check reports")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise QuantstudyError("checking a report in Chromium needs Playwright: pip install playwright") from None
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(html.as_uri(), wait_until="load")
            raw = page.evaluate(_PROBE)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    sections = [SectionView(s["id"], s["text"], s["missing"], len(s["images"]),
                            [i["alt"] for i in s["images"] if not i["ok"] or i["width"] < 50], s["tables"])
                for s in raw]
    return BrowserCheck(sections, screenshot, _problems(sections, expect or {}))


def _problems(sections: list[SectionView], expect: dict[str, dict]) -> list[str]:
    out = []
    seen = {s.id for s in sections}
    out += [f"section {sid}: not in the page" for sid in expect if sid not in seen]
    for s in sections:
        want = expect.get(s.id, {})
        if s.text_chars == 0:
            out.append(f"section {s.id}: empty")
        if s.missing and not want.get("missing"):
            out.append(f"section {s.id}: placeholder {s.missing[0]!r}")
        if s.broken_images:
            out.append(f"section {s.id}: figure not rendered: {', '.join(s.broken_images)}")
        if s.images < want.get("images", 0):
            out.append(f"section {s.id}: {s.images} figure(s), expected at least {want['images']}")
        if len([r for r in s.table_rows if r > 0]) < want.get("tables", 0):
            out.append(f"section {s.id}: {len(s.table_rows)} table(s) with rows, expected at least {want['tables']}")
        out += [f"section {s.id}: a table without rows" for r in s.table_rows if r <= 0]
    return out


# What a full study's report holds (model -> preflight, as `report.html.SECTIONS` orders them).
FULL_STUDY = {
    "answer": {"tables": 1}, "model": {"tables": 1}, "variants": {"tables": 1}, "accuracy": {"tables": 1, "images": 1},
    "similarity": {"tables": 1, "images": 1}, "performance": {"tables": 2, "images": 1},
    "recommendation": {"tables": 1, "images": 1}, "preflight": {},
}
