"""The README and docs/ stay true to the tree: every relative link and #anchor resolves, and
nothing points outside the repository (users do not have the documents it grew from)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert links(page) or page.name != "README.md"
    for target in links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target} does not exist"
        if fragment and destination.suffix == ".md":
            assert fragment in anchors(destination), f"{page.name}: no heading for #{fragment}"


def test_nothing_points_outside_the_repository():
    outside = "sha" "red/"  # spelled in two pieces so this detector does not match itself
    found = subprocess.run(["git", "grep", "-n", "-e", outside, "--", "."], cwd=REPO, capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: no match
    assert found.stdout == "", found.stdout
