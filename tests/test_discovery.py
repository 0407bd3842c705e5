"""Adding an algorithm, a task or a model to mamlkit is its own file: the packages import
every module of theirs, so a new file's registration needs no import added anywhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import mamlkit.algorithms
from mamlkit.algorithms import ALGORITHMS
from mamlkit.config import load_config
from mamlkit.registry import import_modules

NEW_ALGORITHM = """
from dataclasses import dataclass

from mamlkit.algorithms.base import register
from mamlkit.algorithms.maml import MAML
from mamlkit.settings import AlgorithmSettings, require


@dataclass
class HalfStepSettings(AlgorithmSettings):
    name: str = "half_step"
    scale: float = 0.5  # the new algorithm's own hyperparameter

    def validate(self, config):
        super().validate(config)
        require(0 < self.scale <= 1, "algorithm.scale", f"must be in (0, 1], got {self.scale}")


@register("half_step")
class HalfStepMAML(MAML):
    settings_class = HalfStepSettings
"""


def test_a_new_module_of_the_algorithms_package_registers_itself(tmp_path, monkeypatch):
    (tmp_path / "half_step.py").write_text(textwrap.dedent(NEW_ALGORITHM))
    monkeypatch.setattr(ALGORITHMS, "_specs", dict(ALGORITHMS._specs))
    monkeypatch.setattr(
        mamlkit.algorithms, "__path__", [*mamlkit.algorithms.__path__, str(tmp_path)]
    )
    monkeypatch.delitem(sys.modules, "mamlkit.algorithms.half_step", raising=False)
    try:
        assert import_modules("mamlkit.algorithms", mamlkit.algorithms.__path__) == [
            "mamlkit.algorithms.half_step"
        ]
        config = load_config({"algorithm": {"name": "half_step", "scale": 0.25}})
        assert type(config.algorithm).__name__ == "HalfStepSettings"
        assert config.algorithm.scale == 0.25
        assert import_modules("mamlkit.algorithms", mamlkit.algorithms.__path__) == []  # once
    finally:
        sys.modules.pop("mamlkit.algorithms.half_step", None)


def test_importing_a_package_imports_each_of_its_modules():
    code = (
        "import pkgutil, sys, mamlkit.algorithms, mamlkit.tasks, mamlkit.models\n"
        "for pkg in (mamlkit.algorithms, mamlkit.tasks, mamlkit.models):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        assert f'{pkg.__name__}.{m.name}' in sys.modules, m.name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
