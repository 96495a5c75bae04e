"""The docs link only to files of the repository, and those files and headings exist.

Why: the docs ship in the sdist and are read in checkouts and unpacked tarballs, where a
link out of the tree (``../shared/…``) or to a web page is dead or wrong; a renamed heading
or file should fail here rather than in a reader's browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_in_the_repository(doc: Path) -> None:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{doc.name}: external link {target}"
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.name}: no heading for {target}"


def test_admin_guide_and_hooks_doc_exist() -> None:
    guide = (ROOT / "docs" / "admin-guide.md").read_text(encoding="utf-8")
    for topic in ("pipx", "systemd", "First phones", "STUN", "RTP proxy", "Backups",
                  "Upgrading", "fail2ban", "trusted", "TLS", "border proxy"):
        assert topic in guide, topic
    hooks = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    for event in ("activate", "release", "state", "reload", "cdr", "chat/WORD"):
        assert f"`{event}`" in hooks, event
