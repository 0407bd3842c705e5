"""MkDocs hooks of the API reference site (``mkdocs.yml``; ``make docs``).

The home page is README.md, its ``docs/`` links made relative to the site; ``zoo.md`` is
the zoo's generated table (``scripts/zoo.py table``), or a page saying how to make it
where a checkout has none yet; and the docstrings' Sphinx roles (``:class:`X```) render as
plain code, as they read in the source.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = "<!-- exports:"
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):<code>~?")

NO_ZOO = """# The zoo

This checkout has no `docs/zoo.md` yet: it is generated from the zoo's run directories by
`make zoo-table` (`python scripts/zoo.py table`), never written by hand.
"""


def readme_page() -> str:
    """README.md with its links into ``docs/`` pointing at the site's pages."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


def exports_table() -> str:
    """A table of the names ``import mamlkit`` gives (``_EXPORTS`` of its ``__init__``, read
    without importing it), each linked to its reference entry."""
    tree = ast.parse((ROOT / "src" / "mamlkit" / "__init__.py").read_text(encoding="utf-8"))
    exports = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
    )
    rows = [
        f"| `mamlkit.{name}` | [`{module}.{name}`][{module}.{name}] |"
        for name, module in exports.items()
    ]
    return "\n".join(["| name | defined as |", "| --- | --- |", *rows])


def on_files(files: Files, config: Any) -> Files:
    """Add the home page (README.md) and, where the checkout has none, a zoo page."""
    files.append(File.generated(config, "index.md", content=readme_page()))
    if files.get_file_from_path("zoo.md") is None:
        files.append(File.generated(config, "zoo.md", content=NO_ZOO))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill in the table of ``import mamlkit``'s names where a page asks for it."""
    lines = markdown.splitlines()
    return "\n".join(exports_table() if line.startswith(EXPORTS) else line for line in lines)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """``:class:`~a.B``` (rendered ``:class:<code>~a.B</code>``) -> ``<code>a.B</code>``."""
    return ROLE.sub("<code>", html)
