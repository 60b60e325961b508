"""The repository stands alone: a reader who clones it finds every document the code and the docs point to.

* No tracked text file (``.py``, ``.md``, ``.yaml``) sends readers to the design and reference notes that the
  developers keep outside the repository (the ``DESIGN`` and ``REFERENCES`` markdown files of their shared
  folder): what readers need of them is in ``docs/conventions.md`` and ``docs/references.md``. Test fixtures
  may still be read from outside (``../shared/fixtures``); fixture folders are not scanned.
* Every ``docs/<name>.md`` path named in the code, configs, tests and markdown exists, and an ``#anchor`` after it
  names a heading of that file (GitHub's anchor rule); so do the relative links inside ``docs/``.
* Every repository path that the docs name in backticks exists (globs match at least one file). A path right after
  a GitHub ``owner/name`` (LituRout/PSLD ``scripts/inverse.py``) is a file of that repository and is not checked.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml"}
SKIP_PARTS = {".git", ".venv", "outputs", "data", "__pycache__", "fixtures"}

# the two outside notes, spelled so that this file does not match itself
OUTSIDE_NOTE = re.compile(r"\b(?:DESIGN|REFERENCES)\.md\b")
DOC_LINK = re.compile(r"(?<![\w./-])docs/([A-Za-z0-9_./-]+?\.md)(?:#([A-Za-z0-9_-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:diffinv|datamodules|lightning_modules|configs|scripts|checkpoints|tests|docs)/[^`\s]*)`")


def text_files() -> list[Path]:
    """Tracked and new (not ignored) text files of the repository; without git, a walk of the tree."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = list(ROOT.rglob("*"))
    return sorted(p for p in set(paths) if p.suffix in TEXT_SUFFIXES and p.is_file()
                  and not SKIP_PARTS & set(p.relative_to(ROOT).parts) and ".egg-info" not in str(p))


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            found.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return found


def check_link(doc: Path, anchor: str | None, where: str, problems: list[str]) -> None:
    if not doc.is_file():
        problems.append(f"{where}: {doc.relative_to(ROOT)} does not exist")
    elif anchor and anchor not in anchors(doc):
        problems.append(f"{where}: {doc.relative_to(ROOT)} has no heading #{anchor} (headings: "
                        f"{', '.join(sorted(anchors(doc)))})")


def test_no_file_sends_readers_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in text_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE_NOTE.search(line)]
    assert not hits, ("these lines point readers to notes outside the repository; point them to docs/conventions.md "
                      "or docs/references.md (or state the fact) instead:\n" + "\n".join(hits))


def test_every_docs_path_exists_with_its_anchor():
    problems: list[str] = []
    files = text_files()
    for p in files:
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for name, anchor in DOC_LINK.findall(line):
                check_link(ROOT / "docs" / name, anchor or None, f"{p.relative_to(ROOT)}:{i}", problems)
    docs = [p for p in files if p.parent == ROOT / "docs" and p.suffix == ".md"]
    assert {"conventions.md", "references.md"} <= {p.name for p in docs}
    for p in docs:      # relative links inside the docs: [text](other.md#anchor), [text](#anchor)
        for i, line in enumerate(p.read_text().splitlines(), 1):
            for target in MD_LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                doc = (p.parent / path).resolve() if path else p
                if doc.suffix == ".md" or not path:
                    check_link(doc, anchor or None, f"{p.relative_to(ROOT)}:{i}", problems)
                elif not doc.exists():
                    problems.append(f"{p.relative_to(ROOT)}:{i}: {target} does not exist")
    assert not problems, "\n".join(problems)


def test_every_repository_path_in_the_docs_exists():
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            for m in REPO_PATH.finditer(line):
                if re.search(r"\b[\w.-]+/[\w.-]+\s*\(?$", line[:m.start()]):
                    continue                # another repository's file
                path = m.group(1).split("#")[0].rstrip("/")
                if "<" in path:            # a placeholder, e.g. tests/operators_<family>.py
                    continue
                if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                    missing.append(f"{doc.relative_to(ROOT)}:{i}: {path}")
    assert not missing, "\n".join(missing)
