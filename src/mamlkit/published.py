"""The published numbers of the presets that reproduce a paper's table or figure: what
``mamlkit eval``'s summary prints beside a run's result."""

from __future__ import annotations

from dataclasses import dataclass

from mamlkit.config import Config, load_config
from mamlkit.errors import UserError

__all__ = ["PUBLISHED", "Published", "published_for"]

_T1 = "Finn et al. 2017, Table 1"
_RL = "Finn et al. 2017, Fig. 5"
_PN = "Snell et al. 2017"


@dataclass(frozen=True)
class Published:
    """A preset's published result: ``by_step`` maps adaptation steps to the number as the
    paper prints it (None: the final step of the run's protocol); ``ensemble``: the number
    is an ensemble's (``eval.ensemble``), shown beside the run's ensemble."""

    by_step: dict[int | None, str]
    source: str
    ensemble: bool = False


def _final(text: str, source: str, ensemble: bool = False) -> Published:
    return Published({None: text}, source, ensemble)


def _steps(values: str, source: str) -> Published:
    return Published(dict(enumerate(values.split(" / "))), source)


#: preset name -> its published result
PUBLISHED: dict[str, Published] = {
    "omniglot_maml_5w1s": _final("98.7 ± 0.4", _T1),
    "omniglot_maml_5w5s": _final("99.9 ± 0.1", _T1),
    "omniglot_maml_20w1s": _final("95.8 ± 0.3", _T1),
    "omniglot_maml_20w5s": _final("98.9 ± 0.2", _T1),
    "omniglot_fomaml_5w1s": _final("98.3", "Nichol et al. 2018"),
    "omniglot_metasgd_5w1s": _final("99.53", "Li et al. 2017, as summarised (secondary)"),
    "omniglot_mamlpp_5w1s": _final(
        "99.47", "Antoniou et al. 2019, an ensemble of its 5 best validation checkpoints", True
    ),
    # mamlkit tests Reptile with batch statistics over each task's query set: transductive
    "omniglot_reptile_5w1s": _final(
        "97.68",
        "Nichol et al. 2018, Table 1, transductive, as tested here "
        "(non-transductive: 95.39 ± 0.09)",
    ),
    "omniglot_protonet_5w1s": _final("98.8", _PN),
    "omniglot_protonet_5w5s": _final("99.7", _PN),
    "omniglot_protonet_20w1s": _final("96.0", _PN),
    "omniglot_protonet_20w5s": _final("98.9", _PN),
    "miniimagenet_maml_5w1s": _final("48.70 ± 1.84", _T1),
    "miniimagenet_maml_5w5s": _final("63.11 ± 0.92", _T1),
    "miniimagenet_fomaml_5w1s": _final("48.07 ± 1.75", _T1),
    "miniimagenet_fomaml_5w5s": _final("63.15 ± 0.91", _T1),
    "miniimagenet_mamlpp_5w1s": _final("52.15 ± 0.26", "Antoniou et al. 2019"),
    "miniimagenet_mamlpp_5w5s": _final("68.32 ± 0.44", "Antoniou et al. 2019"),
    "rl_nav2d_maml": _steps("−40.41 / −11.68 / −3.33 / −3.23", _RL),
    "rl_nav2d_pretrained": _steps("−40.81 / −19.73 / −11.72 / −8.48", _RL),
    "rl_cheetah_vel_maml": _steps("−129.53 / −78.57 / −66.62 / −60.78", _RL),
    "rl_cheetah_vel_pretrained": _steps("−158.00 / −135.39 / −128.47 / −133.61", _RL),
    "rl_cheetah_dir_maml": _steps("−50.69 / 293.19 / 313.48 / 315.65", _RL),
    "rl_cheetah_dir_pretrained": _steps("−43.03 / −24.75 / −12.85 / 19.57", _RL),
    "rl_nav2d_oracle": _final("−2.29", _RL),
    "rl_cheetah_vel_oracle": _final("−54.47", _RL),
    "rl_cheetah_dir_oracle": _final("442.69", _RL),
}


def _what(config: Config) -> tuple:
    """What a published number depends on: the task's protocol, the model, the algorithm."""
    task = {k: v for k, v in vars(config.task).items() if k != "data_dir"}
    return (sorted(task.items(), key=str), config.model.name, config.algorithm.name)


def published_for(config: Config) -> tuple[str, Published] | None:
    """The preset ``config`` is a run of (the same task protocol, model and algorithm; its
    length and seed may differ) and its published result, or None."""
    mine = _what(config)
    for name, entry in PUBLISHED.items():
        try:
            if _what(load_config(name)) == mine:
                return name, entry
        except UserError:  # a preset this installation lacks: no number
            continue
    return None
