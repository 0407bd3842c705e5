"""One typed config tree (task, model, algorithm, train, eval), loaded from YAML presets
with ``--set a.b=c`` overrides and validated before anything runs."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mamlkit.config_checks import (  # largest_tensor_bytes: kept importable from here
    check_train_eval,
    largest_tensor_bytes,  # noqa: F401
    validate_resources,
)
from mamlkit.config_data import MAX_YAML_BYTES, load_yaml
from mamlkit.config_legacy import own_keys, with_current_names  # noqa: F401  (re-exported)
from mamlkit.errors import ConfigError
from mamlkit.settings import AlgorithmSettings, ModelSettings, TaskSettings, require

# The shipped presets, package data of mamlkit (read through importlib.resources, so they are
# found in a wheel, an sdist install or a checkout alike).
PRESET_DIR = importlib.resources.files("mamlkit") / "configs"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class TrainConfig:
    iterations: int = 70000
    meta_batch: int = 25
    outer_lr: float = 0.001
    lr_halve_every: int = 0  # halve the outer learning rate every n iterations (0: never)
    lr_schedule: str = "constant"  # constant | cosine (from outer_lr to min_lr over the run)
    optimizer: str = "adam"  # the outer optimiser: adam | sgd
    min_lr: float = 0.0
    grad_clip: float | None = None  # clip meta-gradient values to [-c, c]
    log_every: int = 100
    val_every: int = 0  # 0: no periodic validation
    val_tasks: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "cpu"
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads (0: torch's default); 1 is fastest for tiny nets
    # auto (on for CUDA where the algorithm allows) | on | off (YAML reads on/off as booleans)
    cuda_graphs: str | bool = "auto"
    precision: str = "fp32"  # CUDA convolutions and matmuls: fp32 | tf32 (TensorFloat-32)
    # a time budget for each piece of training ("2h30m"): pause with a checkpoint before it
    # ends (status "paused"); `--resume` continues bit-identically. None: no budget
    max_time: str | None = None


@dataclass
class EvalConfig:
    tasks: int = 600
    steps: int = 10
    seed: int = 20170301
    split: str = "test"
    chunk: int = 100  # tasks evaluated at once
    # average the test predictions of the K best validation checkpoints (MAML++'s protocol;
    # captured during training, in ensemble/); 1: the final weights alone
    ensemble: int = 1


def _default_settings(section: str) -> Any:
    """The default component of ``section``: the one its class's default ``name`` names."""
    base = {"task": TaskSettings, "model": ModelSettings, "algorithm": AlgorithmSettings}[section]
    return settings_class(section, base.name)()


@dataclass
class Config:
    """A run's config. ``task``, ``model`` and ``algorithm`` are each the settings of the
    component they name (:mod:`mamlkit.settings`): a sine task's section has no ``ways``,
    a MAML section no ``max_kl``."""

    task: TaskSettings = field(default_factory=lambda: _default_settings("task"))
    model: ModelSettings = field(default_factory=lambda: _default_settings("model"))
    algorithm: AlgorithmSettings = field(default_factory=lambda: _default_settings("algorithm"))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints, and numbers YAML left as strings
    (``1e-3``), are accepted where floats are: one rule for YAML files and ``--set``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-3" as a string, in a file as after --set
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"config key '{key}': expected {_name(tp)}, got {value!r}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _build(cls: type, data: dict[str, Any], prefix: str, missing: Any = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {data!r}")
    if isinstance(
        missing, dict
    ):  # a saved run's values for keys added since, where ``cls`` has them
        own = {f.name for f in dataclasses.fields(cls)}
        data = {**{k: v for k, v in missing.items() if k in own}, **data}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (valid: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.outer_lr=1e-3"`` -> ``{"train": {"outer_lr": "1e-3"}}``: the value parsed as
    YAML, and coerced to the key's type later, by the same rule as a YAML file's values."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. train.iterations=100), got {text!r}")
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def shipped_presets() -> dict[str, Any]:
    """The shipped presets by name (``omniglot_maml_5w1s``), each a readable resource with
    ``read_text()``; an installation without them is broken and says so."""
    found = {}
    if PRESET_DIR.is_dir():
        found = {
            entry.name[: -len(".yaml")]: entry
            for entry in PRESET_DIR.iterdir()
            if entry.name.endswith(".yaml") and entry.is_file()
        }
    if not found:
        raise ConfigError(
            f"no presets found in {PRESET_DIR}: this mamlkit installation is incomplete; "
            "reinstall it (pip install --force-reinstall mamlkit)"
        )
    return dict(sorted(found.items()))


def resolve_preset(name_or_path: str) -> Any:
    """A YAML path, or the name of a preset shipped in ``configs/`` (``omniglot_maml_5w1s``):
    something with ``read_text()``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = shipped_presets()
    if name_or_path in shipped:
        return shipped[name_or_path]
    known = ", ".join(shipped)
    raise ConfigError(f"no config file or preset named '{name_or_path}' (presets: {known})")


#: Keys added after runs were saved, with the value that reproduces a run whose config.yaml
#: predates them (its behaviour then). A run directory's config takes these where it lacks
#: the key, so that resuming or evaluating an old run never silently changes what it trains
#: on; new configs take the dataclass default.
SAVED_BEFORE_THE_KEY: dict[str, dict[str, Any]] = {
    # session 9: 2D navigation's actions became rllab-normalised (maml_rl's environment)
    "task": {"normalized_actions": False},
    # issue 27: new runs' TRPO products became "rop"; a saved run keeps the autograd ones
    "algorithm": {"fisher": "gauss_newton"},
}


def load_config(
    source: str | Path | dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    updates: dict[str, Any] | None = None,
    missing: dict[str, Any] | None = None,
) -> Config:
    """Build and validate a :class:`Config` from a preset name, a YAML path or a dict, then
    ``--set``-style ``overrides`` (values parsed as YAML) and nested ``updates`` (taken as
    they are, e.g. a path from ``--data-dir``; a key the run's component does not have is
    left out). Where an override names another component than the source
    (``--set model.name=resnet12`` on a conv4 preset), the source's keys the new one does
    not have are left out. ``missing`` (nested, like ``updates``) gives values for keys
    the source does not have (a saved run's :data:`SAVED_BEFORE_THE_KEY`), where its
    component has them.

    A key of ``task``, ``model`` or ``algorithm`` that the named component does not have is
    refused, naming it, unless it came from the source with the value every config had
    before the components owned their settings (:mod:`mamlkit.config_legacy`): a run
    saved by an older mamlkit recorded every component's every key."""
    data = _read_source(source)
    explicit: dict[str, Any] = {}
    for text in overrides:
        explicit = _merge(explicit, parse_override(text))
    merged = _merge(data, explicit)
    if updates:
        merged = _merge(merged, updates)
    replaced = {
        section
        for section in COMPONENT_SECTIONS
        if isinstance(merged.get(section), dict)
        and isinstance(data.get(section), dict)
        and "name" in data[section]
        and merged[section].get("name") != data[section]["name"]
    }
    # a model.target given by an override replaces the preset's named model too
    model, source_model = merged.get("model"), data.get("model")
    if isinstance(model, dict) and isinstance(source_model, dict):
        if model.get("target") != source_model.get("target"):
            replaced.add("model")
    config = _build_config(merged, explicit, updates or {}, missing or {}, replaced)
    validate(config)
    return config


def _read_source(source: str | Path | dict | None) -> dict[str, Any]:
    """The config mapping of a preset name, a YAML path or a dict."""
    if isinstance(source, dict):
        return source
    if source is None:
        return {}
    path = resolve_preset(str(source))
    try:
        with path.open(encoding="utf-8") as fh:
            text = fh.read(MAX_YAML_BYTES + 1)  # never more than a config's worth
        if len(text) > MAX_YAML_BYTES:
            raise ConfigError(
                f"{path}: more than {MAX_YAML_BYTES} characters, far more than a "
                "config holds; is it the right file?"
            )
        data = load_yaml(text, str(path)) or {}
    except (UnicodeDecodeError, OSError) as exc:
        why = "not a text file" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ConfigError(f"{path}: cannot be read ({why}); restore or fix it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


#: the sections a registered component owns, in the order they are resolved
COMPONENT_SECTIONS = ("task", "model", "algorithm")


def algorithm_entry(name: str, batches: str | None = None) -> tuple[type, dict[str, Any]]:
    """The registered learner class of ``algorithm.name`` for tasks whose batches are
    ``batches`` (an algorithm may register a class per kind, as ``pretrained`` does; None:
    its default class), and its fixed constructor arguments."""
    from mamlkit.algorithms import ALGORITHMS  # the registry: every algorithm's own file

    return ALGORITHMS.lookup(name).learner(batches)


def settings_class(section: str, name: str, target: str | None = None) -> type:
    """The settings class of the component ``section.name`` names (a model with a
    ``model.target`` has only :class:`ModelSettings`); an unknown name is refused."""
    if section == "algorithm":
        return getattr(algorithm_entry(name)[0], "settings_class", AlgorithmSettings)
    if section == "model" and target is not None:
        return ModelSettings
    if section == "model":
        from mamlkit.models.registry import model_spec

        return model_spec(name).settings_class
    from mamlkit.tasks.registry import task_spec

    return task_spec(name).settings_class


def _build_config(
    data: dict[str, Any],
    explicit: dict[str, Any],
    updates: dict[str, Any],
    missing: dict[str, Any],
    replaced: set[str],
) -> Config:
    """The :class:`Config` of ``data``: ``train`` and ``eval`` as they are, each component
    section as its component's settings (see :func:`load_config` for the keys it lacks)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section 'root' must be a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(Config)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{key}' (valid: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for section in ("train", "eval"):
        if section in data:
            tp = typing.get_type_hints(Config)[section]
            kwargs[section] = _build(tp, data[section], f"{section}.")
    for section in COMPONENT_SECTIONS:
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {given!r}")
        given = dict(given)
        base = typing.get_type_hints(Config)[section]
        name = _coerce(given.get("name", base.name), str, f"{section}.name")
        if section == "algorithm":
            from mamlkit.tasks.registry import task_spec

            task = task_spec(kwargs["task"].name)
            name = task.algorithm_name(name)
            given["name"] = name
            require(
                task.algorithms is None or name in task.algorithms,
                "algorithm.name",
                f"task {task.name!r} runs {' or '.join(task.algorithms or ())}, not {name!r}",
            )
        target = given.get("target") if section == "model" else None
        cls = settings_class(section, name, target if isinstance(target, str) else None)
        kwargs[section] = _build(
            cls,
            own_keys(
                section,
                name,
                cls,
                given,
                explicit.get(section),
                updates.get(section),
                section in replaced,
            ),
            f"{section}.",
            missing.get(section),
        )
    return Config(**kwargs)


def __getattr__(name: str) -> Any:
    # RL_TASKS, kept for older code: the registry's RL tasks, read when asked for (the
    # registry imports torch, which `import mamlkit.config` does not)
    if name == "RL_TASKS":
        from mamlkit.tasks.registry import rl_task_names

        return rl_task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate(c: Config) -> None:
    """Refuse impossible values before training starts, naming the key: the task's, the
    model's and the algorithm's own rules (their settings' ``validate``), then the
    ``train`` and ``eval`` sections and the resources the whole run asks for."""
    from mamlkit.tasks.registry import task_spec

    task = task_spec(c.task.name)
    require(
        task.algorithms is None or c.algorithm.name in task.algorithms,
        "algorithm.name",
        f"task {c.task.name!r} runs {' or '.join(task.algorithms or ())}, not {c.algorithm.name!r}",
    )
    require(
        c.eval.ensemble == 1 or not task.rl,
        "eval.ensemble",
        f"averages predictions given in advance; an RL task ({c.task.name}) samples its "
        "query data: use eval.ensemble=1",
    )
    c.task.validate(c)
    c.model.validate(c)
    c.algorithm.validate(c)
    check_train_eval(c)
    validate_resources(c)
