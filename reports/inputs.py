"""Read what earlier steps saved in a run directory; every input but the tables is optional.

Paths mirror ``zoo.rundir.RunDir`` (not imported: ``zoo/__init__`` imports torch, and
``reports`` never does). A missing optional file yields ``None`` so its figures are skipped
with a note; a present but malformed file raises an error that names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import read_json
from common.tables import CostTable, PredictionTable

ROUTER_COLUMNS = ("method", "family", "sacrifice", "accuracy", "images_per_second")
COMPRESSION_COLUMNS = ("variant", "base")
PRUNE_COLUMNS = ("method", "level", "accuracy", "images_per_second")
HIST_COLUMNS = ("variant", "bin_left", "bin_right", "count")
COMMITTEE_COLUMNS = ("committee", "members", "committee_ms_per_image", "members_ms_per_image")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
ROUTER_NPZ_KEYS = ("methods", "sacrifices", "preds")
DEFAULT_ZOO = "all"       # routers.csv rows without a ``zoo`` (older runs) were fitted on it
ZOO_ORDER = ("all", "base")


@dataclass
class RouterPredictions:
    """Test-split predictions of K routers: ``preds[k]`` is router k's (N,) answers, fitted
    over zoo ``zoos[k]`` (``"all"`` throughout in files written before zoos existed).

    Files written since routers recorded their choices also hold ``chosen[k]`` (N,): the model
    router k sent each image to, an index into ``model_names`` (the run's whole zoo, whatever
    zoo the router was fitted over), and the test ``labels`` (N,); older files lack them
    (``None`` / empty)."""

    methods: list[str]
    sacrifices: np.ndarray   # (K,) float
    preds: np.ndarray        # (K, N) int
    zoos: list[str] = field(default_factory=list)
    chosen: np.ndarray | None = None   # (K, N) int, indices into model_names
    labels: np.ndarray | None = None   # (N,) int
    model_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.zoos:
            self.zoos = [DEFAULT_ZOO] * len(self.methods)

    def index(self, method: str, sacrifice: float, zoo: str = DEFAULT_ZOO) -> int | None:
        """The row of (``method``, ``sacrifice``, ``zoo``), or None."""
        for k, (m, s, z) in enumerate(zip(self.methods, self.sacrifices, self.zoos)):
            if m == method and z == zoo and np.isclose(float(s), sacrifice):
                return k
        return None

    def find(self, method: str, sacrifice: float, zoo: str = DEFAULT_ZOO) -> np.ndarray | None:
        k = self.index(method, sacrifice, zoo)
        return None if k is None else self.preds[k]

    def find_chosen(self, method: str, sacrifice: float,
                    zoo: str = DEFAULT_ZOO) -> np.ndarray | None:
        """The models router (``method``, ``sacrifice``, ``zoo``) chose, or None (no such row,
        or a file written before choices were saved)."""
        k = self.index(method, sacrifice, zoo)
        return None if k is None or self.chosen is None else self.chosen[k]


@dataclass
class RunArtifacts:
    """Everything a report reads, loaded once."""

    root: Path
    val: PredictionTable | None = None
    test: PredictionTable | None = None
    costs: CostTable | None = None
    routers: pd.DataFrame | None = None
    compression: pd.DataFrame | None = None
    prune_sweep: pd.DataFrame | None = None
    weight_hist: pd.DataFrame | None = None
    router_predictions: RouterPredictions | None = None
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    committees: pd.DataFrame | None = None    # results/committees.csv (bench_committee)
    # the router kinds evaluate-routers used: name, family, colour, marker (None: an older run)
    router_kinds: list[dict[str, Any]] | None = None

    @property
    def class_names(self) -> list[str] | None:
        """Class names from the tables' or the cards' dataset description, if recorded."""
        sources = [t.meta.get("dataset") for t in (self.test, self.val) if t is not None]
        sources += [c.get("dataset") for c in self.cards.values()]
        for ds in sources:
            if isinstance(ds, dict) and ds.get("classes"):
                return [str(c) for c in ds["classes"]]
        return None


def read_frame(path: Path, required: tuple[str, ...], writer: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise ValueError(f"{path} is not a readable CSV ({e}); re-run `{writer}`") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing} (has {list(frame.columns)}); "
                         f"re-run `{writer}` to rewrite it")
    return frame


def _read_router_predictions(path: Path) -> RouterPredictions | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ROUTER_NPZ_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks keys {missing}; re-run `evaluate-routers`")
        methods, sac, preds = (z[k] for k in ROUTER_NPZ_KEYS)
        zoos = z["zoos"] if "zoos" in z.files else np.full(len(methods), DEFAULT_ZOO)
        chosen = z["chosen"] if "chosen" in z.files else None
        labels = z["labels"] if "labels" in z.files else None
        names = [str(n) for n in z["model_names"]] if "model_names" in z.files else []
    if (preds.ndim != 2 or len(methods) != preds.shape[0] or len(sac) != preds.shape[0]
            or len(zoos) != preds.shape[0]):
        raise ValueError(f"{path}: methods {methods.shape}, sacrifices {sac.shape}, zoos "
                         f"{zoos.shape} and preds {preds.shape} disagree (expected (K,), (K,), "
                         "(K,), (K, N)); re-run `evaluate-routers`")
    if chosen is not None and chosen.shape != preds.shape:
        raise ValueError(f"{path}: chosen {chosen.shape} and preds {preds.shape} disagree "
                         "(both (K, N)); re-run `evaluate-routers`")
    if labels is not None and labels.shape != (preds.shape[1],):
        raise ValueError(f"{path}: labels {labels.shape} do not match preds {preds.shape} "
                         "(expected (N,)); re-run `evaluate-routers`")
    return RouterPredictions([str(m) for m in methods], sac.astype(float), preds.astype(np.int64),
                             [str(z) for z in zoos],
                             None if chosen is None else chosen.astype(np.int64),
                             None if labels is None else labels.astype(np.int64), names)


def load_run(root: str | Path) -> RunArtifacts:
    """Load a run directory's saved tables and results for reporting."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist; pass the --run DIR that "
                                "`train-zoo`/`run-all` wrote")
    tables, results = root / "tables", root / "results"
    art = RunArtifacts(root=root)
    for split in ("val", "test"):
        if (tables / f"{split}.npz").exists():
            setattr(art, split, PredictionTable.load(tables, split))
    if art.val is not None and art.test is not None:
        art.val.check_compatible(art.test)
    if (root / "costs.json").exists():
        art.costs = CostTable.load(root / "costs.json")
    art.routers = read_frame(results / "routers.csv", ROUTER_COLUMNS, "evaluate-routers")
    art.compression = read_frame(results / "compression.csv", COMPRESSION_COLUMNS, "compress")
    art.prune_sweep = read_frame(results / "prune_sweep.csv", PRUNE_COLUMNS, "compress")
    art.weight_hist = read_frame(results / "weight_hist.csv", HIST_COLUMNS, "compress")
    art.router_predictions = _read_router_predictions(results / "router_predictions.npz")
    art.committees = read_frame(results / "committees.csv", COMMITTEE_COLUMNS,
                                "python -m scripts.bench_committee")
    if (results / "router_kinds.json").exists():
        art.router_kinds = list(read_json(results / "router_kinds.json")["kinds"])
    zoo_dir = root / "zoo"
    if zoo_dir.is_dir():
        for d in sorted(p for p in zoo_dir.iterdir() if p.is_dir()):
            if (d / "card.json").exists():
                art.cards[d.name] = read_json(d / "card.json")
            hist = read_frame(d / "history.csv", HISTORY_COLUMNS, "train-zoo")
            if hist is not None and not hist.empty:
                art.histories[d.name] = hist
    if art.routers is not None:
        art.routers = normalise_router_frame(art.routers)
    return art


def model_of(row: Any) -> str:
    """The model behind a single-model routers.csv row: ``single:NAME`` / ``best-single:NAME`` /
    ``cheapest-single:NAME`` (evaluate-routers), or a ``reference`` column where a row has one."""
    ref = row.get("reference") if hasattr(row, "get") else None
    if isinstance(ref, str) and ref:
        return ref
    method = str(row["method"])
    for prefix in ("best-single:", "cheapest-single:", "single:"):
        if method.startswith(prefix):
            return method[len(prefix):]
    return method


def normalise_router_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Types for routers.csv: numeric sacrifice/metrics, boolean ``budget_held``,
    ``certified`` and ``selected``, text ``selection`` and ``budget_status``, a ``zoo`` on every row (``"all"`` where the file predates zoos). A file
    without ``selected`` keeps lacking it: nothing here may stand in for selection on val."""
    frame = frame.copy()
    frame["method"] = frame["method"].astype(str)
    frame["family"] = frame["family"].astype(str)
    if "zoo" not in frame.columns:
        frame["zoo"] = DEFAULT_ZOO
    frame["zoo"] = frame["zoo"].where(frame["zoo"].notna(), DEFAULT_ZOO).astype(str)
    if "selected" in frame.columns:
        frame["selected"] = frame["selected"].map(lambda v: _as_bool(v) is True)
    for col in frame.columns:
        if col in ("method", "family", "zoo", "selected", "budget_held", "certified",
                   "selection", "budget_status"):
            continue
        if col == "sacrifice" or col.startswith("share_") or frame[col].dtype == object:
            converted = pd.to_numeric(frame[col], errors="coerce")
            if col == "sacrifice" or col.startswith("share_") or converted.notna().any():
                frame[col] = converted
    for col in ("budget_held", "certified"):
        if col in frame.columns:
            frame[col] = frame[col].map(_as_bool)
    return frame


def zoo_rows(frame: pd.DataFrame, zoo: str | None = DEFAULT_ZOO) -> pd.DataFrame:
    """The rows of one zoo (``None``: every row); a frame without ``zoo`` is all ``"all"``."""
    if zoo is None:
        return frame
    if "zoo" not in frame.columns:
        return frame if zoo == DEFAULT_ZOO else frame.iloc[0:0]
    return frame[frame["zoo"].fillna(DEFAULT_ZOO).astype(str) == zoo]


def zoos_of(frame: pd.DataFrame) -> list[str]:
    """The zoos present, ``all`` first, then ``base``, then any other in file order."""
    present = (list(dict.fromkeys(frame["zoo"].fillna(DEFAULT_ZOO).astype(str)))
               if "zoo" in frame.columns else [DEFAULT_ZOO])
    rank = {z: i for i, z in enumerate(ZOO_ORDER)}
    return sorted(present, key=lambda z: (rank.get(z, len(rank)), present.index(z)))


def selected_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows selected on val (none where routers.csv predates selection); any spelling of
    true the CSV may hold counts."""
    if "selected" not in frame.columns:
        return frame.iloc[0:0]
    return frame[frame["selected"].map(lambda v: _as_bool(v) is True).astype(bool)]


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    s = str(v).strip().lower()
    if s in ("true", "1", "1.0", "yes"):
        return True
    if s in ("false", "0", "0.0", "no"):
        return False
    return None
