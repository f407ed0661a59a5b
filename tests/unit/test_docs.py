"""The repository explains itself: its docs and comments point only at files inside it.

A clone has no `../shared/`: the code's comments cite `docs/security.md` rules and families and
`docs/architecture.md` sections, and these tests hold them to what those documents define.
"""

from __future__ import annotations

import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = PROJECT / "stepbuild"
DOCS = PROJECT / "docs"
SECURITY = DOCS / "security.md"
ARCHITECTURE = DOCS / "architecture.md"

# Pointers a user who clones the repository cannot follow (tests may still read the
# conformance suites from ../shared: that is the test harness, not a pointer for a reader).
OUTSIDE_POINTER = re.compile(r"\.\./shared|DESIGN\.md|SECURITY\.md|SECURITY rules?\b")
CITATION = re.compile(r"docs/security\.md([^):;.]*)")
RULES = re.compile(r"\brules?\s+(\d+)(?:\s*[-–]\s*(\d+))?")
FAMILIES = re.compile(r"\bfamil(?:y|ies)\s+([A-Z])\b(?:\s*[-–]\s*([A-Z])\b)?")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def user_facing_files() -> list[Path]:
    """What a reader of the repository reads: the package, the docs and the READMEs."""
    return [*files_under(PACKAGE), *files_under(DOCS), PROJECT / "README.md",
            PROJECT / "bench" / "README.md"]


def defined_rules() -> set[int]:
    return {int(n) for n in re.findall(r"^### Rule (\d+):", read(SECURITY), re.MULTILINE)}


def defined_families() -> set[str]:
    return set(re.findall(r"^\| ([A-Z]) \|", read(SECURITY), re.MULTILINE))


def spread(first: str, last: str | None) -> list[str]:
    """"1", "3" → 1, 2, 3 (as strings); "A", "E" → A … E."""
    if last is None:
        return [first]
    if first.isdigit():
        return [str(n) for n in range(int(first), int(last) + 1)]
    return [chr(c) for c in range(ord(first), ord(last) + 1)]


def citations() -> list[tuple[str, str, str]]:
    """(where, "rule" or "family", number or letter) for every docs/security.md citation in
    the package, the tests, the docs and the READMEs."""
    found = []
    sources = [*user_facing_files(), *files_under(PROJECT / "tests")]
    for path in sources:
        text = read(path)
        for match in CITATION.finditer(text):
            where = f"{path.relative_to(PROJECT)}:{text.count(chr(10), 0, match.start()) + 1}"
            # A citation may wrap onto the next line, in a docstring or a comment.
            words = " ".join(w for w in match.group(1).split() if w != "#")
            for kind, pattern in (("rule", RULES), ("family", FAMILIES)):
                for m in pattern.finditer(words):
                    found += [(where, kind, item) for item in spread(m.group(1), m.group(2))]
    return found


def test_no_pointer_leaves_the_repository() -> None:
    offending = [f"{path.relative_to(PROJECT)}:{number}: {line.strip()}"
                 for path in user_facing_files()
                 for number, line in enumerate(read(path).splitlines(), 1)
                 if OUTSIDE_POINTER.search(line)]
    assert offending == []


def test_security_rules_are_numbered_from_one() -> None:
    rules = defined_rules()
    assert rules == set(range(1, len(rules) + 1)) and len(rules) >= 10


def test_every_cited_rule_and_family_is_defined() -> None:
    cited = citations()
    assert {kind for _, kind, _ in cited} == {"rule", "family"}  # the parser finds both kinds
    known = {"rule": {str(n) for n in defined_rules()}, "family": defined_families()}
    undefined = [f"{where}: {kind} {item}" for where, kind, item in cited
                 if item not in known[kind]]
    assert undefined == []


def test_architecture_names_every_package_and_top_level_module() -> None:
    text = read(ARCHITECTURE)
    packages = sorted(p.parent.relative_to(PACKAGE).as_posix()
                      for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    modules = sorted(p.name for p in PACKAGE.glob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    assert "build/mounts" in packages  # nested packages are found too
    missing = [f"stepbuild/{name}/" for name in packages if f"stepbuild/{name}/" not in text]
    missing += [f"stepbuild/{name}" for name in modules if f"stepbuild/{name}" not in text]
    assert missing == []


def test_relative_links_in_the_docs_resolve() -> None:
    documents = [*DOCS.glob("*.md"), PROJECT / "README.md", PROJECT / "bench" / "README.md"]
    broken = [f"{doc.relative_to(PROJECT)}: {target}"
              for doc in documents for target in MARKDOWN_LINK.findall(read(doc))
              if "://" not in target and not (doc.parent / target).exists()]
    assert broken == []
