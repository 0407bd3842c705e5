"""The API reference site (mkdocs.yml, `make docs`) builds with warnings as errors: a
docstring griffe cannot parse, a broken link or anchor, an unresolved cross-reference or a
page missing from the nav fails here, not on the day someone publishes the site."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_MODULES = [
    "mamlkit",
    "mamlkit.algorithms",
    "mamlkit.functional",
    "mamlkit.tasks",
    "mamlkit.models",
    "mamlkit.callbacks",
    "mamlkit.training",
]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings_handlers.python")),
    reason="mkdocs and mkdocstrings[python] are not installed (the [docs] extra; `make` "
    "installs them from requirements.lock)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    problems = [line for line in done.stderr.splitlines() if not line.startswith("INFO")]
    assert done.returncode == 0, "\n".join(problems)[-4000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    assert "mamlkit" in (site / "index.html").read_text(encoding="utf-8")
    for page in ("design", "reliability", "distributed", "results", "zoo"):
        assert (site / page / "index.html").is_file(), page
    for module in API_MODULES:
        assert (site / "api" / module / "index.html").is_file(), module


def test_the_home_page_is_the_readme_with_site_links(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Your own loop (for learn2learn users)" in home  # a README heading
    assert 'href="docs/' not in home  # README's docs/ links point at the site's pages
    assert 'href="reliability/' in home


def test_the_docstrings_render_as_reference_entries(site):
    algorithms = (site / "api" / "mamlkit.algorithms" / "index.html").read_text("utf-8")
    for name in ("MAML", "MetaSGD", "Reptile", "PrototypicalNetwork"):
        assert f'id="mamlkit.algorithms.{name}"' in algorithms, name
    functional = (site / "api" / "mamlkit.functional" / "index.html").read_text("utf-8")
    assert 'id="mamlkit.functional.inner_loop"' in functional
    # Sphinx roles in the docstrings read as code, not as ":class:" text
    for page in (algorithms, functional):
        assert ":class:<" not in page and ":func:<" not in page and ":meth:<" not in page


def test_every_name_of_import_mamlkit_links_to_its_entry(site):
    init = ast.parse((ROOT / "src" / "mamlkit" / "__init__.py").read_text(encoding="utf-8"))
    exports = next(
        ast.literal_eval(node.value)
        for node in init.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS"
    )
    page = (site / "api" / "mamlkit" / "index.html").read_text(encoding="utf-8")
    for name, module in exports.items():
        assert f"<code>mamlkit.{name}</code>" in page, name
        assert f"#{module}.{name}" in page, f"mamlkit.{name} has no link to {module}.{name}"
