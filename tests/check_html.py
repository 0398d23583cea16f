"""Check an index.html the way a person's browser sees it.

    python tests/check_html.py outputs/sample/index.html [--screenshot page.png]

1. Every relative src/href of the page names a file that exists (pure Python).
2. Headless Chromium opens the page from file:// and every <img> must load
   (complete, with a natural width): broken images fail the check.
Exit status 0 when both hold; a one-line reason otherwise. `make check-html` runs it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

WRAPPER = """<!DOCTYPE html><html><body>
<iframe id="page" src="index.html" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById("page").onload = function () {
  var images = Array.from(this.contentDocument.images);
  Promise.all(images.map(function (img) {
    return img.complete ? 0 : new Promise(function (done) { img.onload = done; img.onerror = done; });
  })).then(function () {
    var out = document.createElement("pre");
    out.id = "result";
    out.textContent = JSON.stringify(images.map(function (img) {
      return {src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0};
    }));
    document.body.appendChild(out);
  });
};
</script></body></html>
"""


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.links.append(value)


def broken_links(index: Path) -> list[str]:
    """Relative links of `index` whose file is missing (anchors and absolute URLs are skipped)."""
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    missing = []
    for link in parser.links:
        parsed = urlparse(link)
        if parsed.scheme or parsed.netloc or not parsed.path:
            continue
        if not (index.parent / unquote(parsed.path)).is_file():
            missing.append(link)
    return missing


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def images_in_browser(index: Path, screenshot: Path | None = None) -> list[dict]:
    """[{src, ok}] for every <img> of the page as loaded by headless Chromium."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install chromium")
    wrapper = index.parent / ".check_index.html"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=15000"]
    try:
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run([browser, *flags, f"--user-data-dir={profile}", "--dump-dom", wrapper.resolve().as_uri()],
                                  capture_output=True, text=True, timeout=120)
            if screenshot is not None:
                subprocess.run([browser, *flags, f"--user-data-dir={profile}", "--window-size=1280,1800",
                                f"--screenshot={screenshot.resolve()}", index.resolve().as_uri()],
                               capture_output=True, timeout=120)
    finally:
        wrapper.unlink(missing_ok=True)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        raise RuntimeError(f"Chromium did not report the page's images (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-300:]}")
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    if not args.index.is_file():
        print(f"check-html: {args.index} not found; run `make run` first", file=sys.stderr)
        return 2
    missing = broken_links(args.index)
    if missing:
        print(f"check-html: {len(missing)} broken link(s) in {args.index}: {', '.join(missing[:5])}", file=sys.stderr)
        return 1
    try:
        images = images_in_browser(args.index, args.screenshot)
    except RuntimeError as exc:
        print(f"check-html: {exc}", file=sys.stderr)
        return 2
    bad = [i["src"] for i in images if not i["ok"]]
    if bad or not images:
        print(f"check-html: {len(bad)} of {len(images)} images failed to load: {', '.join(bad[:5])}", file=sys.stderr)
        return 1
    print(f"check-html: {len(images)} images loaded, no broken link in {args.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
