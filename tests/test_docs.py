"""The README stays a five-minute read and the docs site stays whole.

- README.md has at most 250 lines, and every file it links to exists (the user guide pages in
  ``docs/``, the picture, CHANGELOG.md);
- every page under ``docs/`` is in the site's navigation (``mkdocs.yml``), and every page the
  navigation names exists (``mkdocs build --strict`` in ``.ci/run`` checks the links inside pages);
- the README's two commands are the ones ``.ci/run`` runs;
- the troubleshooting page lists every bad-input case of ``tests/test_entry_errors.py``.

The option tables (``docs/options.md``) are generated and tested in ``tests/test_options.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250


def _links(markdown: str) -> list[str]:
    """Relative link targets (``[text](target)`` and ``![alt](target)``), without anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (at most {MAX_README_LINES}): move the details into a page of docs/ "
        "and link it from the README's 'Where to go next' table"
    )


def test_every_file_the_readme_links_exists():
    links = _links(README.read_text())
    assert any(t.startswith("docs/") for t in links), "README.md links to no docs page"
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist under docs/: {missing}"
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    orphans = [p for p in pages if p not in nav]
    assert not orphans, f"docs pages missing from mkdocs.yml's nav (add them there): {orphans}"


def test_blocks_inside_list_items_are_indented_by_four():
    # Python-Markdown (mkdocs) nests a paragraph or code block under a list item only when it is
    # indented by 4 spaces; GitHub accepts 2, so a page written for GitHub renders as broken lists.
    bad = []
    for page in sorted(DOCS.rglob("*.md")):
        fence, prev = False, ""
        for n, line in enumerate(page.read_text().splitlines(), 1):
            starts_fence = re.match(r"\s*(```|~~~)", line)
            if (not fence or starts_fence) and prev.strip() == "" and re.match(r" {1,3}\S", line):
                if not fence:
                    bad.append(f"{page.relative_to(ROOT)}:{n}: {line.strip()[:60]}")
            if starts_fence:
                fence = not fence
            prev = line
    assert not bad, (
        "indent these list-item blocks by 4 spaces (mkdocs renders 2 as a broken list):\n" + "\n".join(bad)
    )


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = README.read_text()
    install_and_test = 'python -m pip install -e ".[dev]" && python -m pytest -q'
    demo = 'python -m pip install -e ".[dev]" && python -m zoomfeat.extract demo=true'
    assert install_and_test in readme and demo in readme
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_troubleshooting_lists_every_entry_point_case():
    from test_entry_errors import CASES

    page = (DOCS / "troubleshooting.md").read_text()
    rows = {
        tuple(cell.strip() for cell in ln.split("|")[1:3]) for ln in page.splitlines() if ln.startswith("| ")
    }
    missing = [f"{c.entry}: {c.name}" for c in CASES if (c.entry, c.name) not in rows]
    assert not missing, (
        f"docs/troubleshooting.md has no row for {missing}: regenerate its table with "
        "`ZOOMFEAT_ENTRY_TABLE=docs/troubleshooting.md python -m pytest -q tests/test_entry_errors.py`"
    )
