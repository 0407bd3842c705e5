"""The zoo's runs and what their directories hold: the entries in priority order
(:data:`ZOO`), reading a run's status, length and evaluation, trimming it to what resuming
and evaluating need, and the size caps. Used by ``scripts/zoo.py`` (training in pieces)
and ``scripts/zoo_table.py`` (docs/zoo.md)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "zoo"

#: size caps: one run, and the whole zoo
RUN_CAP = 3 * 2**20
ZOO_CAP = 60 * 2**20
#: what a zoo run keeps (the latest checkpoint only: train.keep_checkpoints=1)
KEEP = {
    "config.yaml",
    "data.json",
    "env.json",
    "resumes.jsonl",
    "metrics.jsonl",
    "status.json",
    "model.safetensors",
    "checkpoints",
    "ensemble",  # eval.ensemble's test predictions of the best validation checkpoints
}


@dataclass(frozen=True)
class Entry:
    """A zoo run: its preset (the published number it is compared with is
    :data:`mamlkit.published.PUBLISHED`'s, or :data:`NO_NUMBER`'s note), or a ``variant`` of
    it: the preset with other settings (``sets``, what ``note`` says), named
    ``PRESET_VARIANT``."""

    preset: str
    variant: str = ""
    sets: tuple[str, ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.preset}_{self.variant}" if self.variant else self.preset

    @property
    def paper(self) -> str:
        from mamlkit.published import PUBLISHED

        if self.preset in NO_NUMBER:
            return NO_NUMBER[self.preset]
        published = PUBLISHED.get(self.preset)
        if published is None:
            return ""
        number = f"{' / '.join(published.by_step.values())} ({published.source})"
        return f"{number}; {self.note}" if self.note else number


#: zoo runs whose paper reports no number for their cell
NO_NUMBER = {
    "omniglot_anil_5w1s": "none: Raghu et al. 2020 report no Omniglot 5-way 1-shot",
    "omniglot_lake_protonet_20w1s": "none quoted here (Lake et al.'s protocol)",
}
#: the zoo, in its priority order (issue "Reference runs that outlive a machine")
ZOO: list[Entry] = [
    Entry(name)
    for name in (
        "rl_cheetah_vel_maml",
        "rl_cheetah_dir_maml",
        "omniglot_anil_5w1s",
        "omniglot_metasgd_5w1s",
        "omniglot_mamlpp_5w1s",
        "omniglot_reptile_5w1s",
        "omniglot_fomaml_5w1s",
        "rl_cheetah_vel_pretrained",
        "rl_cheetah_vel_oracle",
        "rl_cheetah_dir_pretrained",
        "rl_cheetah_dir_oracle",
        "rl_nav2d_maml",
        "rl_nav2d_pretrained",
        "rl_nav2d_oracle",
        "omniglot_lake_protonet_20w1s",
        "omniglot_protonet_5w1s",
        "omniglot_protonet_5w5s",
        "omniglot_protonet_20w1s",
        "omniglot_protonet_20w5s",
        "omniglot_maml_5w5s",
        "omniglot_maml_20w1s",
        "omniglot_maml_20w5s",
    )
]
#: the MAML half-cheetahs in gymnasium's MDP (HalfCheetah-v5: 5 physics steps per environment
#: step), as the presets ran before they took the paper's (rllab's) in session 16
ZOO += [
    Entry(
        f"rl_cheetah_{goal}_maml",
        "gymnasium",
        ("task.env=gymnasium",),
        "this run: gymnasium's HalfCheetah-v5 MDP, not the paper's (rllab's)",
    )
    for goal in ("vel", "dir")
]


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status(run: Path) -> dict:
    return read_json(run / "status.json") or {}


def length(run: Path) -> int | None:
    import yaml

    try:
        return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def evaluation(run: Path) -> dict | None:
    """The run's eval.json when it evaluated the weights the run has now."""
    record = read_json(run / "eval.json")
    if record is None or status(run).get("status") != "finished":
        return None
    if record.get("step") != status(run).get("step"):
        return None  # an evaluation of other weights (the run was extended since)
    return record


def trim(run: Path) -> None:
    """Keep what resuming and evaluating need: :data:`KEEP`, eval files, one checkpoint."""
    for path in run.iterdir():
        keep = path.name in KEEP or (path.name.startswith("eval") and path.suffix == ".json")
        if keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    checkpoints = sorted((run / "checkpoints").glob("step-*.safetensors"))
    for old in checkpoints[:-1]:
        old.unlink()
    # a finished run is evaluated from model.safetensors; its last checkpoint only serves to
    # train it further. Where both break the cap (Meta-SGD: step sizes and their Adam
    # moments), the checkpoint goes: the weights are what the zoo keeps.
    finished = status(run).get("status") == "finished" and (run / "model.safetensors").is_file()
    if finished and sizes(run.parent)[0].get(run.name, 0) > RUN_CAP:
        for path in checkpoints[-1:]:
            path.unlink()


def sizes(zoo: Path = ZOO_DIR) -> tuple[dict[str, int], int]:
    per_run = {
        run.name: sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
        for run in sorted(zoo.iterdir())
        if run.is_dir()
    } if zoo.is_dir() else {}  # fmt: skip
    return per_run, sum(per_run.values())


def check(zoo: Path = ZOO_DIR) -> list[str]:
    """What breaks the zoo's size caps."""
    per_run, total = sizes(zoo)
    problems = [
        f"{name}: {size / 2**20:.2f} MB > {RUN_CAP / 2**20:.0f} MB"
        for name, size in per_run.items()
        if size > RUN_CAP
    ]
    if total > ZOO_CAP:
        problems.append(f"zoo: {total / 2**20:.1f} MB > {ZOO_CAP / 2**20:.0f} MB")
    return problems
