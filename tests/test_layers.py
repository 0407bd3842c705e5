"""The library's layers (issue 25, items 5 and 6): its import graph, read from the source
with ``ast``, has no circle among the imports a module runs when it is imported, and no
library module imports the CLI or the paper's experiments (``mamlkit.experiments``), which
sit above it; the experiments live in that package; renamed names (``adapt_only``,
``Trainer.config``, ``PerLayerStepSchedule``) keep their old spelling working, with a
DeprecationWarning where a keyword or attribute was renamed."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch.nn.functional as F

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent
#: modules allowed to import the CLI and the experiments (everything else is the library)
TOP = ("mamlkit.cli", "mamlkit.experiments", "mamlkit.launch", "mamlkit.__main__")
UPPER = ("mamlkit.cli", "mamlkit.experiments")


def module_name(path: Path) -> str:
    """``src/mamlkit/a/b.py`` -> ``mamlkit.a.b``; a package's ``__init__.py`` -> its name."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> set[str]:
    """The mamlkit modules an import statement loads (``from pkg import sub`` loads the
    submodule ``pkg.sub`` when there is one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            package = importer.split(".")
            if MODULES[importer].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return {n for n in names if n in MODULES}


def imports(name: str) -> tuple[set[str], set[str]]:
    """(modules imported when ``name`` is imported, modules imported anywhere in it):
    the first skips function bodies and ``if TYPE_CHECKING:`` blocks, the second does not
    skip function bodies."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top: set[str] = set()
    anywhere: set[str] = set()

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, at_import)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found = _targets(node, name)
            anywhere.update(found)
            if at_import:
                top.update(found)
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import and not inside_function)

    visit(tree, True)
    # a module's own packages are already being imported when it is (``from . import ops``)
    own = {name, *(name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1))}
    return top - own, anywhere - own


GRAPH = {name: imports(name) for name in MODULES}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_every_module():
    """The reader sees the imports it must (a guard against a test that finds nothing)."""
    assert "mamlkit.experiments.sine" in GRAPH["mamlkit.cli.reproduce"][1]  # in a function
    assert "mamlkit.experiments.sine" in GRAPH["mamlkit.experiments.sine_seeds"][0]
    assert "mamlkit.training" in GRAPH["mamlkit.experiments.sine"][0]
    assert sum(len(top) for top, _ in GRAPH.values()) > 50


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of ``graph`` (name -> names it imports), by depth-first search for a back
    edge: ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (circle := visit(name)):
            return circle
    return None


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_among_the_imports_run_at_import_time():
    circle = find_circle({name: top for name, (top, _) in GRAPH.items()})
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_library_never_imports_the_cli_or_the_experiments():
    """Also not lazily inside a function: the layers above use the library, never back."""
    wrong = {
        name: sorted(t for t in anywhere if _under(t, UPPER))
        for name, (_, anywhere) in GRAPH.items()
        if not _under(name, TOP)
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_paper_experiments_live_in_mamlkit_experiments():
    """`reproduce sine` and `sine-seeds`, their report and figures: not in the library."""
    from mamlkit import plots
    from mamlkit.experiments import sine, sine_plots, sine_report, sine_seeds

    for old in ("mamlkit.reproduce", "mamlkit.sine_seeds"):
        assert importlib.util.find_spec(old) is None, old
    assert not {"sine_fits", "sine_mse", "iterations_note"} & set(dir(plots))
    assert callable(sine.reproduce_sine) and callable(sine_seeds.reproduce_sine_seeds)
    assert callable(sine_report.report_markdown) and callable(sine_plots.sine_fits)


def _model():
    from mamlkit.models import MLP

    return MLP((1, 8, 8, 1))


def test_adapt_only_names_the_selection_and_adapt_still_works_with_a_warning():
    from mamlkit import MAML
    from mamlkit.functional import adaptable_params

    new = MAML(_model(), F.mse_loss, 0.1, adapt_only=["net.2"])
    assert set(adaptable_params(new.model, new.adapt_only)) == {"net.2.weight", "net.2.bias"}
    assert "adapted" not in vars(new)  # one name for the selection
    with pytest.warns(DeprecationWarning, match="adapt_only=") as caught:
        old = MAML(_model(), F.mse_loss, 0.1, adapt=["net.2"])
    assert caught[0].filename == __file__  # points at the caller's line
    assert set(adaptable_params(old.model, old.adapt_only)) == {"net.2.weight", "net.2.bias"}
    with pytest.warns(DeprecationWarning, match="adapt_only"):
        assert old.adapted is old.adapt_only
    with pytest.raises(TypeError, match="adapt_only= only"):
        MAML(_model(), F.mse_loss, 0.1, adapt_only="net.2", adapt="net.2")
    with pytest.raises(TypeError, match="adaptt"):
        MAML(_model(), F.mse_loss, 0.1, adaptt="net.2")


def test_anil_refuses_both_spellings_of_the_selection():
    from mamlkit import ANIL

    for keyword in ("adapt_only", "adapt"):
        with pytest.raises(TypeError, match=f"head=, not {keyword}="):
            ANIL(_model(), F.mse_loss, 0.1, **{keyword: "net.0"})


def test_the_trainer_has_one_name_for_its_config():
    from mamlkit import MAML, SineTasks
    from mamlkit.config import load_config
    from mamlkit.training import Trainer

    config = load_config("sine_maml", ["train.iterations=1"])
    trainer = Trainer(MAML(_model(), F.mse_loss, 0.1), SineTasks(), config, progress=None)
    assert trainer.config is config and "cfg" not in vars(trainer)
    with pytest.warns(DeprecationWarning, match="config.train"):
        assert trainer.cfg is config.train
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the library reads config.train
        trainer.fit()
    assert trainer.step == 1


def test_lslr_has_a_clearer_name_and_keeps_the_old_one():
    from mamlkit import MAMLPlusPlus
    from mamlkit.functional import PerLayerPerStepStepSize, PerLayerStepSchedule

    assert PerLayerPerStepStepSize is PerLayerStepSchedule
    learner = MAMLPlusPlus(_model(), F.mse_loss, 0.1, 2)
    rules = [m for m in learner.modules() if isinstance(m, PerLayerStepSchedule)]
    assert len(rules) == 1
