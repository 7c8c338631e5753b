#!/usr/bin/env python3
"""Checks the relative links of the documentation; mdBook does not.

    scripts/check-doc-links.py [FILE.md ...]

Without arguments it checks README.md, docs/src/**/*.md and
benches/README.md. For every relative link (inline, reference definition,
image, or an HTML href/src) it checks that:

- the target exists, relative to the linking file (a leading "/" means the
  repository's top);
- a "#fragment" on a Markdown target (or on the file itself) is the anchor
  of one of its headings, slugged as GitHub and mdBook do: lower case, each
  space to "-", every character other than letters, digits, "-" and "_"
  dropped, "-1", "-2"... for repeated headings; `{#id}` after a heading and
  <a id|name="..."> count too;
- a link in the book (docs/src) stays inside docs/src: mdBook renders only
  the files there, so a link out of it is broken in the rendered book.

A chapter's {{#include FILE}} is read as mdBook reads it: the included
headings are the chapter's anchors, and the included links must resolve
from the chapter too. Links inside code (fenced blocks, `spans`) are not
links. http(s), mailto and other URLs with a scheme are not checked.

Exits 1 and lists each broken link as FILE:LINE: ..., or prints a summary
and exits 0. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK_SRC = ROOT / "docs" / "src"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HEADING_ID = re.compile(r"\s*\{#([A-Za-z0-9_-]+)[^}]*\}\s*$")
INCLUDE = re.compile(r"\{\{#include\s+([^}\s]+)\s*\}\}")
# [text](target) and ![alt](target); the target may be <...> or end at a
# space before a "title". One level of nested brackets in the text.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ATTR = re.compile(r"""<[a-zA-Z][^>]*?\b(?:href|src)\s*=\s*["']([^"']*)["']""")
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass
class Line:
    """A line of Markdown outside code blocks, with where it came from."""

    text: str
    number: int  # in the file that holds it
    source: Path  # that file (an included file's lines keep theirs)


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def prose_lines(path: Path, expand_includes: bool, seen: frozenset[Path] = frozenset()) -> list[Line]:
    """The lines outside fenced code, with mdBook's {{#include}} expanded
    (whole files; an include in a code block is code)."""
    out: list[Line] = []
    fence: str | None = None
    for number, text in enumerate(read(path), 1):
        m = FENCE.match(text)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            close = FENCE_CLOSE.match(text)
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                fence = None
            continue
        inc = INCLUDE.search(text) if expand_includes else None
        if inc:
            target = (path.parent / inc.group(1).split(":", 1)[0]).resolve()
            if target.is_file() and target not in seen:
                out.extend(prose_lines(target, True, seen | {path.resolve()}))
                continue
        out.append(Line(text, number, path))
    return out


def strip_code_spans(text: str) -> str:
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def slug(heading: str) -> str:
    """GitHub's and mdBook's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text

    def plain(t: str) -> str:  # outside code: no tags, *emphasis* or _emphasis_
        t = re.sub(r"<[^>]+>", "", t).replace("*", "").replace("`", "")
        return re.sub(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", "", t)

    pieces, pos = [], 0
    for m in CODE_SPAN.finditer(text):  # code keeps every character
        pieces += [plain(text[pos : m.start()]), m.group(2)]
        pos = m.end()
    text = "".join(pieces) + plain(text[pos:])
    out = []
    for ch in text.strip().lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch.isspace():
            out.append("-")
    return "".join(out)


def anchors(path: Path) -> set[str]:
    """Every anchor a link may name in a Markdown file."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    lines = prose_lines(path, expand_includes=is_book_file(path))

    def add(heading: str) -> None:
        explicit = HEADING_ID.search(heading)
        if explicit:
            found.add(explicit.group(1))
            heading = heading[: explicit.start()]
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")

    previous = ""
    for line in lines:
        text = line.text
        for m in HTML_ANCHOR.finditer(text):
            found.add(m.group(1))
        m = ATX.match(text)
        if m:
            add(m.group(2) or "")
            previous = ""
            continue
        if SETEXT.match(text) and previous.strip() and not previous.startswith(("    ", "\t")):
            add(previous.strip())
            previous = ""
            continue
        previous = text
    return found


def is_book_file(path: Path) -> bool:
    return BOOK_SRC in path.resolve().parents


def link_targets(text: str) -> list[str]:
    text = strip_code_spans(text)
    targets = [m.group(1) for m in INLINE_LINK.finditer(text)]
    m = REF_DEF.match(text)
    if m:
        targets.append(m.group(1))
    targets += [m.group(1) for m in HTML_ATTR.finditer(text)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def check(path: Path, anchor_cache: dict[Path, set[str]]) -> tuple[int, list[str]]:
    """(links checked, problems) for one file."""
    problems: list[str] = []
    checked = 0
    book = is_book_file(path)
    shown = path.relative_to(ROOT) if ROOT in path.parents else path

    def anchors_of(p: Path) -> set[str]:
        if p not in anchor_cache:
            anchor_cache[p] = anchors(p)
        return anchor_cache[p]

    if book:
        for number, text in enumerate(read(path), 1):
            for inc in INCLUDE.finditer(text):
                target = (path.parent / inc.group(1).split(":", 1)[0]).resolve()
                if not target.is_file():
                    problems.append(f"{shown}:{number}: {{{{#include {inc.group(1)}}}}}: no such file")

    for line in prose_lines(path, expand_includes=book):
        where = f"{shown}:{line.number}"
        if line.source != path:
            src = line.source.relative_to(ROOT) if ROOT in line.source.parents else line.source
            where = f"{shown} (included {src}:{line.number})"
        for raw in link_targets(line.text):
            if not raw or SCHEME.match(raw) or raw.startswith("//"):
                continue  # external, or empty
            checked += 1
            target, _, fragment = raw.partition("#")
            target = urllib.parse.unquote(target)
            fragment = urllib.parse.unquote(fragment)
            if target:
                base = ROOT if target.startswith("/") else path.parent
                resolved = (base / target.lstrip("/")).resolve()
            else:
                resolved = path.resolve()
            if not resolved.exists():
                problems.append(f"{where}: '{raw}': {target} does not exist")
                continue
            if book and BOOK_SRC.resolve() not in resolved.parents:
                problems.append(f"{where}: '{raw}': leaves docs/src, so the rendered book has no such page")
                continue
            if fragment:
                if resolved.is_dir() or resolved.suffix.lower() != ".md":
                    if resolved.is_dir():
                        problems.append(f"{where}: '{raw}': #{fragment} on a folder")
                    continue  # a source file's #L10 is GitHub's business
                if fragment not in anchors_of(resolved):
                    problems.append(f"{where}: '{raw}': no heading with the anchor #{fragment} in {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
    return checked, problems


def default_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted(BOOK_SRC.rglob("*.md"))
    files.append(ROOT / "benches" / "README.md")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md, docs/src, benches/README.md)")
    args = parser.parse_args()
    files = [f.resolve() for f in args.files] or default_files()
    missing = [f for f in files if not f.is_file()]
    if missing:
        for f in missing:
            print(f"{f}: no such file", file=sys.stderr)
        return 1
    cache: dict[Path, set[str]] = {}
    total = 0
    problems: list[str] = []
    for f in files:
        n, p = check(f, cache)
        total += n
        problems += p
    if problems:
        print(f"{len(problems)} broken link(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{total} relative links in {len(files)} files: all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
