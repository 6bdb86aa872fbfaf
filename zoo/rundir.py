"""The run directory: where every step writes, and the run's config that later steps reuse.

Layout: ``RUN/{config.json, splits/, zoo/<model>/(checkpoint.pt, card.json, history.csv),
tables/, costs.json, policies/, results/*.csv, reports/*.png, reports/index.html}``.

A model name is a plain folder name (``check_model_name`` refuses path separators, ``.`` and
``..``); ``@`` is fine, so another seed's model (``tiny_vgg2@s1``) and a committee
(``committee-tiny_vgg2x3``) are folders and table columns like any model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from common.io import read_json, write_json


@dataclass
class RunConfig:
    """Data settings fixed by the first step of a run and reused by every later step."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    seed: int = 0
    limit_train: int | None = None
    limit_eval: int | None = None
    download: bool = True
    image_size: int | None = None
    val_fraction: float = 0.1
    preset: str | None = None

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``zoo.data.prepare_data`` (without ``run_dir``)."""
        return {"dataset": self.dataset, "data_dir": self.data_dir, "seed": self.seed,
                "limit_train": self.limit_train, "limit_eval": self.limit_eval,
                "download": self.download, "image_size": self.image_size,
                "val_fraction": self.val_fraction}


def check_val_fraction(fraction: float) -> float:
    """``fraction`` if it can be the share of the training pool held out as val, (0, 0.5];
    else ``ValueError`` naming the fix."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"--val-fraction {fraction} is the share of the training pool held out "
                         "for val: use a value in (0, 0.5], e.g. 0.1 or 0.2")
    return fraction


def check_model_name(name: str) -> str:
    """``name`` if it can be a folder under ``RUN/zoo/``: not empty, not ``.``/``..``, no path
    separator, no control character; else ``ValueError``."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 for c in name)):
        raise ValueError(f"model name {name!r} must be a plain folder name")
    return name


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def model_dir(self, model: str) -> Path:
        return self.root / "zoo" / check_model_name(model)

    def checkpoint(self, model: str) -> Path:
        return self.model_dir(model) / "checkpoint.pt"

    def card(self, model: str) -> Path:
        return self.model_dir(model) / "card.json"

    def history(self, model: str) -> Path:
        return self.model_dir(model) / "history.csv"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def costs(self) -> Path:
        return self.root / "costs.json"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def index_html(self) -> Path:
        return self.reports / "index.html"

    def finished_models(self) -> list[str]:
        """Models with both a checkpoint and a card (a card is written last, so it marks done)."""
        zoo_dir = self.root / "zoo"
        if not zoo_dir.is_dir():
            return []
        return sorted(p.name for p in zoo_dir.iterdir()
                      if (p / "checkpoint.pt").exists() and (p / "card.json").exists())

    def read_card(self, model: str) -> dict[str, Any]:
        return read_json(self.card(model))

    # ---- config ----------------------------------------------------------------------
    def load_config(self) -> RunConfig:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.config_path} does not exist: {self.root} is not a run "
                                    "directory yet; start it with `train-zoo --run DIR`")
        d = read_json(self.config_path)
        names = {f.name for f in fields(RunConfig)}
        return RunConfig(**{k: v for k, v in d.items() if k in names})

    def save_config(self, config: RunConfig) -> Path:
        return write_json(self.config_path, asdict(config))

    def ensure_config(self, config: RunConfig) -> RunConfig:
        """Save ``config`` for a new run; for an existing run, refuse changed data settings."""
        if not self.config_path.exists():
            self.save_config(config)
            return config
        old = self.load_config()
        keys = ("dataset", "seed", "limit_train", "limit_eval", "image_size", "val_fraction")
        changed = [k for k in keys if getattr(old, k) != getattr(config, k)]
        if changed:
            diffs = ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(config, k)!r}" for k in changed)
            raise ValueError(f"run {self.root} was started with other data settings ({diffs}); "
                             "use a new --run directory or the original settings")
        return old
