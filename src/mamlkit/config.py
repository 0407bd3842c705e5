"""One typed config tree (task, model, algorithm, train, eval), loaded from YAML presets
with ``--set a.b=c`` overrides and validated before anything runs."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mamlkit.config_data import MAX_YAML_BYTES, check_plain_data, load_yaml
from mamlkit.errors import ConfigError, UserError
from mamlkit.limits import MAX_EVAL_SAMPLES, MAX_EVAL_TASKS, MAX_STEPS, check_eval_work

# The shipped presets, package data of mamlkit (read through importlib.resources, so they are
# found in a wheel, an sdist install or a checkout alike).
PRESET_DIR = importlib.resources.files("mamlkit") / "configs"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class TaskConfig:
    # a registered task (mamlkit.tasks.register_task): sine, omniglot, miniimagenet,
    # imagefolder, and the RL tasks nav2d, cheetah_vel, cheetah_dir
    name: str = "sine"
    # sine: K support and K query points per task
    k_support: int = 10
    k_query: int = 10
    # few-shot episodes: N-way, K-shot, Q queries per class
    ways: int = 5
    shots: int = 1
    queries: int = 1
    train_ways: int | None = None  # ProtoNets train with more ways (e.g. 60)
    train_queries: int | None = None
    data_dir: str | None = None
    split: str = "maml"  # Omniglot: maml (1200/423 random) | lake (background/evaluation)
    split_seed: int = 0
    val_classes: int = 0  # taken out of the training classes for validation
    # 0/90/180/270° as new classes (training only); default: on for Omniglot only
    rotations: bool | None = None
    image_size: int = 28
    # Omniglot: test episodes take their N characters from one alphabet
    # (Lake et al. 2015's within-alphabet one-shot protocol; train episodes stay any-alphabet)
    within_alphabet: bool = False
    channels: int | None = None  # 1 grey, 3 RGB; default: the task's (omniglot 1, others 3)
    # imagefolder without train/ val/ test/ folders: class proportions of the seeded split
    split_fractions: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])
    batch_size: int = 64  # pretrained classifier: images per ordinary minibatch
    # reinforcement learning: episode length, trajectories per task per inner step
    # in training and at test time, and the oracle baseline's goal in the observation
    horizon: int = 100
    rollouts: int = 20
    eval_rollouts: int = 40
    # test steps of at least this many environment steps per task, in rounds of
    # eval_rollouts trajectories (rllab's batch_size in maml_rl's test scripts); 0: exactly
    # eval_rollouts trajectories
    eval_samples: int = 0
    oracle: bool = False
    # 2D navigation: the policy acts in [-1, 1] and moves 0.1 x that (rllab's normalize, as
    # maml_rl); false: the action is the move, clipped to +-0.1 (mamlkit up to session 8)
    normalized_actions: bool = True


@dataclass
class ModelConfig:
    name: str = "mlp"  # a registered model (mamlkit.models.register_model): mlp, conv4, resnet12
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    filters: int = 64
    pooling: str = "stride"  # conv4: stride | max
    init: str = "torch"  # mlp: torch (PyTorch default) | trunc_normal (cbfinn/maml: std 0.01)
    global_pool: bool = False  # conv4: average the last feature map before the head (cbfinn)
    # conv4, resnet12 for protonet: track running stats, use them in eval
    bn_running_stats: bool = False
    # resnet12: the channels of its four residual blocks (TADAM/MetaOptNet: 64-160-320-640)
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])
    dropblock: float = 0.0  # resnet12: DropBlock's drop probability in blocks 3-4 (0: off)
    dropblock_size: int = 5  # resnet12: DropBlock's square side (cut to the feature map)
    # any importable nn.Module ("package.module:ClassName" built with kwargs); replaces name
    target: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig:
    name: str = "maml"  # a registered algorithm: maml, fomaml, metasgd, anil, protonet, ...
    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    impl: str = "auto"  # auto | batched | vmap | loop
    eval_inner_lr: float | None = None
    head: str | None = None  # anil: the parameter-name prefix it adapts (default: last Linear)
    # mamlpp: LSLR, multi-step loss annealed over msl_epochs, first order for
    # first_order_epochs, per-step BatchNorm weights; an epoch is iterations_per_epoch
    # meta-iterations
    learned_step_sizes: bool = True
    per_step_bn: bool = True
    msl_epochs: int = 10
    first_order_epochs: int = 0
    iterations_per_epoch: int = 500
    # reptile: the interpolation ε, annealed linearly over train.iterations
    meta_step_size: float = 1.0
    meta_step_size_final: float = 0.0
    # test-time step sizes, one per step (the last repeats); empty: eval_inner_lr (RL only)
    eval_inner_lrs: list[float] = field(default_factory=list)
    # reinforcement learning: returns, advantages and the TRPO outer step
    discount: float = 0.99
    gae_lambda: float = 1.0
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    # TRPO's Fisher-vector products: rop (Jᵀ F J by hand-written derivatives, and the step
    # length from conjugate gradient's products) | gauss_newton (Jᵀ F J by autograd) | hessian
    fisher: str = "rop"


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


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
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


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {data!r}")
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
    they are, e.g. a path from ``--data-dir``). ``missing`` (nested, like ``updates``) gives
    values for keys the source does not have (a saved run's :data:`SAVED_BEFORE_THE_KEY`)."""
    data: dict[str, Any] = {}
    if isinstance(source, dict):
        data = source
    elif source is not None:
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
    if missing:
        data = _merge(missing, data)
    for text in overrides:
        data = _merge(data, parse_override(text))
    if updates:
        data = _merge(data, updates)
    config = _build(Config, data, "")
    validate(config)
    return config


def __getattr__(name: str) -> Any:
    # RL_TASKS, kept for older code: the registry's RL tasks, read when asked for (the
    # registry imports torch, which `import mamlkit.config` does not)
    if name == "RL_TASKS":
        from mamlkit.tasks.registry import rl_task_names

        return rl_task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate_rl(c: Config) -> None:
    """The keys only reinforcement-learning runs read."""
    for key, value in [
        ("task.horizon", c.task.horizon),
        ("task.rollouts", c.task.rollouts),
        ("task.eval_rollouts", c.task.eval_rollouts),
        ("algorithm.cg_iterations", c.algorithm.cg_iterations),
        ("algorithm.max_backtracks", c.algorithm.max_backtracks),
    ]:
        _require(value >= 1, key, f"must be >= 1, got {value}")
    _require(
        c.task.eval_samples >= 0,
        "task.eval_samples",
        f"must be >= 0 (0: eval_rollouts trajectories), got {c.task.eval_samples}",
    )
    _require(c.model.name == "mlp", "model.name", "the policy of an RL task is an mlp")
    for key, value in [
        ("algorithm.max_kl", c.algorithm.max_kl),
        ("algorithm.cg_damping", c.algorithm.cg_damping),
    ]:
        _require(math.isfinite(value) and value > 0, key, f"must be > 0, got {value}")
    for key, value in [
        ("algorithm.discount", c.algorithm.discount),
        ("algorithm.gae_lambda", c.algorithm.gae_lambda),
    ]:
        _require(0 <= value <= 1, key, f"must be in [0, 1], got {value}")
    _require(
        0 < c.algorithm.backtrack_ratio < 1,
        "algorithm.backtrack_ratio",
        f"must be in (0, 1), got {c.algorithm.backtrack_ratio}",
    )
    _require(
        c.algorithm.fisher in ("rop", "gauss_newton", "hessian"),
        "algorithm.fisher",
        f"must be rop, gauss_newton or hessian, got {c.algorithm.fisher!r}",
    )
    _require(
        all(math.isfinite(a) and a > 0 for a in c.algorithm.eval_inner_lrs),
        "algorithm.eval_inner_lrs",
        f"step sizes must be positive numbers, got {c.algorithm.eval_inner_lrs}",
    )


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def validate(c: Config) -> None:
    """Refuse impossible values before training starts, naming the key."""
    # the registries: every task's and model's name, and what mamlkit knows about it
    from mamlkit.models.registry import model_spec
    from mamlkit.tasks.registry import task_spec

    task = task_spec(c.task.name)
    _require(
        task.algorithms is None or c.algorithm.name in task.algorithms,
        "algorithm.name",
        f"task {c.task.name!r} runs {' or '.join(task.algorithms or ())}, not {c.algorithm.name!r}",
    )
    if task.rl:
        validate_rl(c)
    _require(
        c.task.name != "imagefolder" or bool(c.task.data_dir),
        "task.data_dir",
        "task.name=imagefolder needs the folder of class folders (or --data-dir)",
    )
    _require(c.task.channels in (None, 1, 3), "task.channels", "must be 1 (grey) or 3 (RGB)")
    fractions = c.task.split_fractions
    _require(
        len(fractions) == 3 and min(fractions) >= 0 and fractions[0] > 0 and fractions[2] > 0,
        "task.split_fractions",
        f"needs three fractions (train, val, test), train and test > 0; got {fractions}",
    )
    model = model_spec(c.model.name)  # refuses an unknown name, listing the registered ones
    if c.model.target is None:
        model.check_config(c)  # the keys only that model reads
    _require(c.model.pooling in ("stride", "max"), "model.pooling", "must be 'stride' or 'max'")
    _require(
        c.model.target is not None or not c.model.kwargs,
        "model.kwargs",
        "only used with model.target; set model.target='package.module:ClassName'",
    )
    check_plain_data(c.model.kwargs, "model.kwargs")
    _require(
        c.model.init in ("torch", "trunc_normal"), "model.init", "must be 'torch' or 'trunc_normal'"
    )
    _require(c.train.threads >= 0, "train.threads", f"must be >= 0, got {c.train.threads}")
    if c.train.max_time is not None:
        from mamlkit.budget import parse_duration

        parse_duration(c.train.max_time, "train.max_time")
    if c.model.name == "conv4" and c.model.pooling == "max":
        _require(
            c.task.image_size >= 16,
            "task.image_size",
            f"conv4 with max-pooling halves the image 4 times; needs >= 16, got "
            f"{c.task.image_size}",
        )
    for key in ("train_ways", "train_queries"):
        _require(
            getattr(c.task, key) is None or c.algorithm.name == "protonet",
            f"task.{key}",
            f"only Prototypical Networks train with other episodes than they test on; "
            f"remove it for algorithm {c.algorithm.name!r}",
        )
    from mamlkit.algorithms import ALGORITHMS  # the registry: every algorithm's own file

    _require(
        c.algorithm.name in ALGORITHMS,
        "algorithm.name",
        f"unknown algorithm {c.algorithm.name!r} ({', '.join(sorted(ALGORITHMS))})",
    )
    _require(
        c.algorithm.impl in ("auto", "batched", "vmap", "loop"),
        "algorithm.impl",
        "must be auto, batched, vmap or loop",
    )
    for key, value in [
        ("task.k_support", c.task.k_support),
        ("task.k_query", c.task.k_query),
        ("task.ways", c.task.ways),
        ("task.shots", c.task.shots),
        ("task.queries", c.task.queries),
        ("task.image_size", c.task.image_size),
        ("task.batch_size", c.task.batch_size),
        ("train.meta_batch", c.train.meta_batch),
        ("train.log_every", c.train.log_every),
        ("train.checkpoint_every", c.train.checkpoint_every),
        ("train.keep_checkpoints", c.train.keep_checkpoints),
        ("train.val_tasks", c.train.val_tasks),
        ("eval.tasks", c.eval.tasks),
        ("eval.chunk", c.eval.chunk),
        ("model.filters", c.model.filters),
    ]:
        _require(value >= 1, key, f"must be >= 1, got {value}")
    # 0: a run that holds its initialisation (the "random init" baseline), evaluable as any
    _require(c.train.iterations >= 0, "train.iterations", f"must be >= 0, got {c.train.iterations}")
    for key, value in [
        ("task.train_ways", c.task.train_ways),
        ("task.train_queries", c.task.train_queries),
    ]:
        _require(value is None or value >= 1, key, f"must be >= 1, got {value}")
    _require(c.task.ways >= 2, "task.ways", f"must be >= 2, got {c.task.ways}")
    _require(all(h >= 1 for h in c.model.hidden), "model.hidden", "sizes must be >= 1")
    for key, value in [
        ("algorithm.inner_steps", c.algorithm.inner_steps),
        ("eval.steps", c.eval.steps),
        ("train.val_every", c.train.val_every),
        ("train.lr_halve_every", c.train.lr_halve_every),
        ("task.val_classes", c.task.val_classes),
    ]:
        _require(value >= 0, key, f"must be >= 0, got {value}")
    for key, value in [
        ("algorithm.inner_lr", c.algorithm.inner_lr),
        ("algorithm.eval_inner_lr", c.algorithm.eval_inner_lr),
        ("train.outer_lr", c.train.outer_lr),
        ("train.grad_clip", c.train.grad_clip),
    ]:
        _require(
            value is None or (math.isfinite(value) and value > 0),
            key,
            f"must be a positive number, got {value}",
        )
    _require(
        c.train.device == "cpu" or c.train.device.startswith("cuda"),
        "train.device",
        f"must be cpu or cuda[:n], got {c.train.device!r}",
    )
    _require(c.eval.split in ("train", "val", "test"), "eval.split", "must be train, val or test")
    if isinstance(c.train.cuda_graphs, bool):
        c.train.cuda_graphs = "on" if c.train.cuda_graphs else "off"
    _require(
        c.train.cuda_graphs in ("auto", "on", "off"), "train.cuda_graphs", "must be auto, on or off"
    )
    _require(
        c.train.cuda_graphs != "on" or c.train.device.startswith("cuda"),
        "train.cuda_graphs",
        "on needs train.device=cuda; use auto (graphs wherever CUDA is used) or off",
    )
    _require(c.train.precision in ("fp32", "tf32"), "train.precision", "must be fp32 or tf32")
    _require(c.train.optimizer in ("adam", "sgd"), "train.optimizer", "must be adam or sgd")
    _require(
        c.train.lr_schedule in ("constant", "cosine"),
        "train.lr_schedule",
        f"must be constant or cosine, got {c.train.lr_schedule!r}",
    )
    _require(
        not (c.train.lr_schedule == "cosine" and c.train.lr_halve_every),
        "train.lr_schedule",
        "cosine and train.lr_halve_every are two schedules; set one of them",
    )
    _require(
        math.isfinite(c.train.min_lr) and 0 <= c.train.min_lr <= c.train.outer_lr,
        "train.min_lr",
        f"must be between 0 and train.outer_lr, got {c.train.min_lr}",
    )
    for key in ("msl_epochs", "first_order_epochs"):
        value = getattr(c.algorithm, key)
        _require(value >= 0, f"algorithm.{key}", f"must be >= 0, got {value}")
    _require(
        c.algorithm.iterations_per_epoch >= 1,
        "algorithm.iterations_per_epoch",
        f"must be >= 1, got {c.algorithm.iterations_per_epoch}",
    )
    validate_resources(c)


# Ceilings far above any sensible run, each with the reason a user reads when refused.
_CEILINGS = [
    (
        "train.threads",
        1024,
        "each is an operating-system thread; more than the CPU cores only slows training down",
    ),
    ("task.image_size", 1024, "Conv4 is made for small images (Omniglot 28, MiniImagenet 84)"),
    ("model.filters", 4096, "the paper's nets use 32 or 64"),
    ("eval.chunk", 10000, "tasks evaluated at once; more only needs more memory"),
    # mamlkit.limits: the same ceilings as eval's --tasks, --steps and --samples
    ("eval.tasks", MAX_EVAL_TASKS, "the papers use 600; more only narrows the interval"),
    ("train.val_tasks", MAX_EVAL_TASKS, "validation tasks; the presets use 100-600"),
    ("eval.steps", MAX_STEPS, "test-time adaptation steps; the papers use 10"),
    ("task.eval_samples", MAX_EVAL_SAMPLES, "environment steps per task and test step"),
]
_SEEDS = ("train.seed", "eval.seed", "task.split_seed")
_INT64 = 2**63 - 1


def _get(c: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(c, section), name)


def _int_fields(c: Config) -> list[tuple[str, int]]:
    out = []
    for section in dataclasses.fields(c):
        for f in dataclasses.fields(getattr(c, section.name)):
            value = getattr(getattr(c, section.name), f.name)
            values = value if isinstance(value, list) else [value]
            out += [(f"{section.name}.{f.name}", v) for v in values if type(v) is int]
    return out


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def largest_tensor_bytes(c: Config) -> tuple[int, str]:
    """A lower bound on the largest float32 tensor of one meta-training batch, and the keys
    it grows with: the first layer's activations, or the inner loop's per-task copies of
    the weights. (Evaluation runs in ``eval.chunk``-sized pieces; lowering that helps.)"""
    from mamlkit.tasks.registry import task_spec

    t, m, tr = c.task, c.model, c.train
    if task_spec(t.name).inputs == "vector":
        width = max([*m.hidden, 1])
        sizes = [1, *m.hidden, 1]
        weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        activations = tr.meta_batch * (t.k_support + t.k_query) * width
        keys = "train.meta_batch, task.k_support/k_query, model.hidden"
        return 4 * max(activations, weights * tr.meta_batch), keys
    per_task = (t.train_ways or t.ways) * (t.shots + (t.train_queries or t.queries))
    images = t.batch_size if c.algorithm.name == "pretrained" else tr.meta_batch * per_task
    if m.name == "resnet12" and m.target is None:
        # the first block convolves at full size; the largest weight is a 3×3 conv of the
        # widest block (per task: the inner loop copies it)
        ins = [1, *m.channels]  # a block's first conv reads the previous block's channels
        convs = [a * b for a, b in zip(ins, m.channels)] + [n * n for n in m.channels]
        activations = images * max(m.channels[:1] or [1]) * t.image_size**2
        weights = 9 * max(convs or [1]) * tr.meta_batch
        keys = "train.meta_batch, task.ways/shots/queries, task.image_size, model.channels"
        return 4 * max(activations, weights), keys
    side = t.image_size if m.pooling == "max" else (t.image_size + 1) // 2
    activations = images * m.filters * side**2
    weights = 9 * m.filters**2 * tr.meta_batch
    keys = "train.meta_batch, task.ways/shots/queries, task.image_size, model.filters"
    return 4 * max(activations, weights), keys


def validate_resources(c: Config) -> None:
    """Refuse requests no machine can serve (they would crash deep inside torch or the OS):
    integers beyond 64 bits, absurd sizes, a batch larger than this machine's memory."""
    for key, value in _int_fields(c):
        _require(abs(value) <= _INT64, key, f"{value} does not fit in a 64-bit integer")
    for key in _SEEDS:
        value = _get(c, key)
        _require(0 <= value, key, f"seeds are non-negative 63-bit integers, got {value}")
    for key, ceiling, reason in _CEILINGS:
        value = _get(c, key)
        _require(value <= ceiling, key, f"{value} is more than {ceiling} ({reason})")
    from mamlkit.tasks.registry import task_spec

    try:
        check_eval_work(
            c,
            c.eval.tasks,
            c.eval.steps,
            {"tasks": "eval.tasks", "steps": "eval.steps", "samples": "task.eval_samples"},
            rl=task_spec(c.task.name).rl,
        )
    except UserError as exc:
        raise ConfigError(f"config keys {exc}") from None
    needed, keys = largest_tensor_bytes(c)
    memory = _memory_bytes()
    if memory and needed > memory:
        raise ConfigError(
            f"config keys {keys}: one batch needs at least {needed / 2**30:.0f} GiB, more than "
            f"this machine's {memory / 2**30:.0f} GiB of memory; lower them"
        )
