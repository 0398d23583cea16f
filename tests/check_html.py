"""Check the site of an output folder the way a person's browser sees it.

    python tests/check_html.py outputs/sample/index.html [--no-keys] [--screenshot page.png]

The crawl starts at index.html and follows every relative link to an .html page inside
the output folder (the cluster pages, the duplicates, outliers, assigned and map pages).
For every page it finds:

1. every relative src/href names a file that exists (a photo outside the output folder
   too, and a file:// URL's file), a #fragment into one of the pages names an element of
   it, and no <img>, <script> or stylesheet comes from the network (pure Python);
2. headless Chromium opens every page from file://, one after the other in a frame of one
   session: every <img> must load (complete, with a natural width; lazy images are
   switched to eager first, so all of them load), and no JavaScript error or console
   message may appear (Chromium's own log, --enable-logging=stderr, and window.onerror);
3. on a page with rel="prev"/"next" links (the cluster pages), the keys ArrowRight and j
   must land on the "next" page and ArrowLeft and k on the "prev" page (skipped with --no-keys).

Exit status 0 when all hold; the problems, one a line, otherwise. `make check-html` runs it;
tests/test_site.py imports `check_site`, `crawl`, `browse` and `broken_links`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse

KEYS = {"ArrowRight": "next", "j": "next", "ArrowLeft": "prev", "k": "prev"}

WRAPPER = """<!DOCTYPE html><html><body>
<iframe id="page" style="width:1280px;height:900px"></iframe>
<script>
var PAGES = %(pages)s, KEYS = %(keys)s, WITH_KEYS = %(with_keys)s;
var frame = document.getElementById("page");
function wait(ms) { return new Promise(function (done) { setTimeout(done, ms); }); }
function load(url) {
  return new Promise(function (done) { frame.onload = function () { done(true); }; frame.src = url; });
}
function landed(action) {  // the URL the frame shows after `action`, or null when it stays
  return Promise.race([
    new Promise(function (done) { frame.onload = function () { done(true); }; action(); }),
    wait(5000).then(function () { return false; })
  ]).then(function (moved) {
    if (!moved) { return null; }
    try { return frame.contentWindow.location.href; } catch (e) { return "unreachable: " + e; }
  });
}
function watch(errors) {  // errors thrown after the load (the parse-time ones are in Chromium's log)
  try {
    frame.contentWindow.onerror = function (message, source, line) { errors.push(message + " (" + source + ":" + line + ")"); };
  } catch (e) { errors.push("cannot watch the page: " + e); }
}
async function images(doc) {
  var all = Array.from(doc.images);
  all.forEach(function (img) { img.loading = "eager"; });
  await Promise.race([
    Promise.all(all.map(function (img) {
      return img.complete ? 0 : new Promise(function (done) { img.addEventListener("load", done); img.addEventListener("error", done); });
    })),
    wait(20000)
  ]);
  return all.map(function (img) { return {src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0}; });
}
async function main() {
  var report = {};
  for (var i = 0; i < PAGES.length; i++) {
    var url = PAGES[i], entry = {images: [], errors: [], keys: {}};
    report[url] = entry;
    await load(url);
    var doc;
    try { doc = frame.contentDocument; } catch (e) { doc = null; }
    if (!doc) { entry.errors.push("the page cannot be opened in a frame"); continue; }
    watch(entry.errors);
    entry.images = await images(doc);
    var hasNav = doc.querySelector('a[rel~="next"], a[rel~="prev"]');
    if (WITH_KEYS && hasNav) {
      for (var j = 0; j < KEYS.length; j++) {
        var key = KEYS[j];
        if (j > 0) { await load(url); watch(entry.errors); }
        var target = frame.contentDocument;
        entry.keys[key] = await landed(function () {
          target.body.dispatchEvent(new KeyboardEvent("keydown", {key: key, bubbles: true, cancelable: true}));
        });
      }
    }
  }
  var out = document.createElement("pre");
  out.id = "result";
  out.textContent = btoa(unescape(encodeURIComponent(JSON.stringify(report))));
  document.body.appendChild(out);
}
main();
</script></body></html>
"""


class _Page(HTMLParser):
    """The links (tag, attribute, value) and element ids of one page."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.links.append((tag, name, value))
            elif name == "id" and value:
                self.ids.add(value)


def parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


def target(page: Path, link: str) -> Path | None:
    """The file a link of `page` names: relative, or a file:// URL; None for another scheme
    or a link to a place in the page itself. Percent-escapes are bytes of the file's name."""
    parsed = urlparse(link)
    if parsed.scheme == "file":
        return Path(os.fsdecode(unquote_to_bytes(parsed.path)))
    if parsed.scheme or parsed.netloc or not parsed.path:
        return None
    return page.parent / os.fsdecode(unquote_to_bytes(parsed.path))


def broken_links(page: Path) -> list[str]:
    """The links of `page` that name no file (or, into an .html page, no element id), and
    whatever it would fetch from the network."""
    problems = []
    for tag, attribute, link in parse(page).links:
        parsed = urlparse(link)
        if parsed.scheme in ("http", "https", "ftp") or link.startswith("//"):
            if tag != "a":  # a page may link the web; it may not load anything from it
                problems.append(f"{link} (fetched from the network)")
            continue
        path = target(page, link)
        if path is None:
            if not parsed.scheme and not parsed.path and parsed.fragment:
                if unquote_to_bytes(parsed.fragment).decode("utf-8", "replace") not in parse(page).ids:
                    problems.append(f"{link} (no such id)")
            continue
        if not path.is_file():
            problems.append(link)
        elif parsed.fragment and path.suffix == ".html":
            if unquote_to_bytes(parsed.fragment).decode("utf-8", "replace") not in parse(path).ids:
                problems.append(f"{link} (no such id)")
    return problems


def crawl(index: Path) -> list[Path]:
    """Every .html page inside index's folder reachable from it by relative links, index first."""
    root = index.parent.resolve()
    seen, order, todo = {index.resolve()}, [index], deque([index])
    while todo:
        page = todo.popleft()
        for _, _, link in parse(page).links:
            path = target(page, link)
            if path is None or path.suffix != ".html" or not path.is_file():
                continue
            resolved = path.resolve()
            if root not in resolved.parents or resolved in seen:
                continue
            seen.add(resolved)
            order.append(path)
            todo.append(path)
    return order


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


_CONSOLE = re.compile(r':CONSOLE[:(\d)]*\]? "(?P<message>.*)", source: (?P<source>\S*) \(\d+\)')


@dataclass
class Browsed:
    images: list[dict] = field(default_factory=list)  # {src, ok}
    errors: list[str] = field(default_factory=list)  # JavaScript errors and console messages
    keys: dict[str, str | None] = field(default_factory=dict)  # key -> the URL it landed on


def browse(pages: list[Path], keys: bool = True, screenshot: Path | None = None) -> dict[Path, Browsed]:
    """Open every page in headless Chromium (one session): its images, errors and, with
    `keys`, where each navigation key lands."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install chromium")
    uris = [page.resolve().as_uri() for page in pages]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=600000", "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as folder:
        wrapper = Path(folder) / "wrapper.html"
        wrapper.write_text(WRAPPER % {"pages": json.dumps(uris), "keys": json.dumps(list(KEYS)),
                                      "with_keys": json.dumps(keys)}, encoding="utf-8")
        profile = Path(folder) / "profile"
        proc = subprocess.run([browser, *flags, f"--user-data-dir={profile}", "--dump-dom", wrapper.as_uri()],
                              capture_output=True, text=True, timeout=600)
        if screenshot is not None:
            subprocess.run([browser, *flags, f"--user-data-dir={profile}", "--window-size=1280,1800",
                            f"--screenshot={screenshot.resolve()}", uris[0]], capture_output=True, timeout=120)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        raise RuntimeError(f"Chromium did not report on the pages (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-300:]}")
    report = json.loads(base64.b64decode(match.group(1)).decode("utf-8"))
    result = {page: Browsed(**report[uri]) for page, uri in zip(pages, uris)}
    by_uri = dict(zip(uris, pages))
    for line in proc.stderr.splitlines():
        console = _CONSOLE.search(line)
        if console and console.group("source") != wrapper.as_uri():
            page = by_uri.get(console.group("source").split("#")[0])
            message = f"console: {console.group('message')} ({console.group('source')})"
            (result[page].errors if page else result[pages[0]].errors).append(message)
    return result


def check_site(index: Path, keys: bool = True, screenshot: Path | None = None) -> tuple[list[Path], list[str]]:
    """(the pages crawled, the problems found: empty when the site is sound)."""
    pages = crawl(index)
    problems = [f"{page}: broken link {link}" for page in pages for link in broken_links(page)]
    browsed = browse(pages, keys, screenshot)
    for page, seen in browsed.items():
        problems += [f"{page}: image did not load: {i['src']}" for i in seen.images if not i["ok"]]
        problems += [f"{page}: {error}" for error in seen.errors]
        rels = _rel_links(page)
        for key, rel in KEYS.items():
            if rel not in rels or not keys:
                continue
            expected = target(page, rels[rel])
            landed = seen.keys.get(key)
            if landed is None or not landed.startswith("file:"):
                problems.append(f"{page}: key {key} went nowhere ({landed}); expected {rels[rel]}")
            elif expected is None or Path(os.fsdecode(unquote_to_bytes(urlparse(landed).path))) != expected.resolve():
                problems.append(f"{page}: key {key} landed on {landed}, expected {rels[rel]}")
    return pages, list(dict.fromkeys(problems))  # a page loaded again for each key repeats its errors


class _Rels(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rels: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            for rel in (values.get("rel") or "").split():
                self.rels.setdefault(rel, values["href"])


def _rel_links(page: Path) -> dict[str, str]:
    """rel -> href of the page's first <a rel=...> of each kind ("prev", "next")."""
    parser = _Rels()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.rels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path, help="the output folder's index.html")
    parser.add_argument("--no-keys", action="store_true", help="do not press the navigation keys on each page")
    parser.add_argument("--screenshot", type=Path, default=None, help="also save a screenshot of index.html here")
    args = parser.parse_args()
    if not args.index.is_file():
        print(f"check-html: {args.index} not found; run `make run` first", file=sys.stderr)
        return 2
    try:
        pages, problems = check_site(args.index, keys=not args.no_keys, screenshot=args.screenshot)
    except RuntimeError as exc:
        print(f"check-html: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"check-html: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-html: {len(pages)} pages crawled from {args.index}: every image loads, every link resolves, "
          "no JavaScript error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
