"""What a router kind is: the one class every deployable kind (cascade, learned cascade, the two
dispatchers, ...) subclasses, and the context a zoo's fit hands it.

A kind is fitted per level like a scikit-learn estimator: ``Kind(ctx).fit(sacrifice, target)``
returns the instance with its fitted state in attributes ending in ``_`` (``router_``,
``candidate_``, ``details_``). ``ctx`` holds what the whole zoo shares (the table the kind
chooses on, the costs, the reference, the images where the kind needs them), and
``prepared()`` caches a kind's per-zoo work there (every simulated cascade, a trained
dispatcher network), so each level's fit is a lookup. Under certified selection the kind
contributes its candidates to the level's one path (``path_entries``), answers for any of
them on the certify part (``correct_on_certify``) and deploys the one chosen
(``fit_entry``; None: the reference alone).

What the rest of the project asks of a kind, each a method here: ``simulate`` (the choice per
test image, from tables or the router's own network), ``run`` (the executed routing, inside
the clock), ``state`` / ``from_state`` (the artifact), ``needed_models``, ``why`` (the page's
explanation of one choice), and the class attributes ``name`` (the routers.csv method),
``family``, ``style`` (the figures' colour and marker) and ``simplicity`` (ties at equal cost
go to the simpler kind). ``router.kinds.ROUTER_KINDS`` is the one table of kinds; every loop
over kinds reads it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from common.tables import PredictionTable
from oracle.policy import fit_policy
from router.base import Router
from router.certify import PoolEntry
from router.execute import ExecResult, execute_routed
from router.selection import Candidate
from zoo.data import DatasetInfo


@dataclass(frozen=True)
class KindStyle:
    """How a kind is drawn in every figure: colour, marker and marker size."""

    color: str
    marker: str = "o"
    size: float = 4.5

    def to_dict(self) -> dict[str, Any]:
        return {"color": self.color, "marker": self.marker, "size": self.size}


@dataclass
class KindSettings:
    """The fit settings kinds read (evaluate-routers' ``EvalConfig`` or ``fit_router``'s
    arguments)."""

    margin_z: float = 1.0                 # estimate rule: paired SEs subtracted before the target
    max_stages: int = 3
    grid: int = 24
    committee_grid: int | None = None     # the committee cascade's grid (None: ``grid``)
    learned_folds: int = 5
    learned_fit_share: float = 0.5
    seed: int = 0
    label_policy: str = "budget"
    dispatcher: Any = None                # router.dispatcher.DispatcherConfig
    dispatcher_max_macs: float = float("inf")
    dispatcher_max_ms: float | None = None
    # mode -> {"arch": arch dict, "ms_per_image": network ms} pinned from an earlier run
    dispatcher_archs: dict[str, dict[str, Any]] | None = None
    delta: float = 0.1
    estimate_weight: float | None = None  # certified path: router.certify.ESTIMATE_WEIGHT


@dataclass
class KindContext:
    """What one zoo's fit hands every kind.

    ``val``: the table the kind chooses on (all of val under the estimate rule, the select
    part under certified selection), ``images`` aligned with it (None where no kind needs
    them); ``certify`` / ``certify_images``: the certify part (certified selection only).
    ``cvec``: ms per image of each model, each stage's own routing time included;
    ``head_ms``: what a learned deferral head adds per stage. ``record``: what goes into
    fits.json for this zoo; ``shared``: per-zoo caches (``RouterKind.prepared``).
    """

    zoo: str
    val: PredictionTable
    cvec: np.ndarray
    ref: int
    settings: KindSettings
    images: torch.Tensor | None = None
    info: DatasetInfo | None = None
    certify: PredictionTable | None = None
    certify_images: torch.Tensor | None = None
    head_ms: float = 0.0
    stage_ms: float = 0.0
    log: Callable[[str], None] = print
    record: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.val.model_names)

    def policy(self, kind: str, sacrifice: float) -> Any:
        """The oracle policy ``kind`` fitted on ``val`` with ``cvec`` at ``sacrifice`` (a bound
        by the true label; the label dispatcher maps through one), fitted once per level."""
        key = ("policy", kind, float(sacrifice))
        if key not in self.shared:
            self.shared[key] = fit_policy(kind, self.val, self.cvec, sacrifice)
        return self.shared[key]

    @property
    def ref_accuracy(self) -> float:
        """The reference's accuracy on the table the kinds choose on."""
        return float(self.val.correct[:, self.ref].mean())


@dataclass
class TestView:
    """What scoring on the test split gives a kind: the zoo's test table, the test images
    (for routers that look at them) and a cache shared by the zoo's kinds."""

    table: PredictionTable
    images: torch.Tensor | None
    info: DatasetInfo | None
    shared: dict[str, Any] = field(default_factory=dict)


class RouterKind(ABC):
    """One deployable router kind (see the module doc)."""

    name: ClassVar[str]                    # method name in routers.csv and artifacts
    family: ClassVar[str]                  # routers.csv family (figures group by it)
    style: ClassVar[KindStyle]
    simplicity: ClassVar[int] = 5          # tie-break at equal expected cost: lower is simpler
    router_types: ClassVar[tuple[type, ...]] = ()   # Router classes it deploys
    needs_images: ClassVar[bool] = False   # it trains on / looks at the images themselves
    # certified path: 0 sets thresholds on tables, 1 fits models on the select part (tested after)
    path_group: ClassVar[int] = 0
    description: ClassVar[str] = ""

    def __init__(self, ctx: KindContext):
        self.ctx = ctx
        self.router_: Router | None = None
        self.candidate_: Candidate | None = None
        self.details_: dict[str, Any] = {}

    # ---- per zoo -----------------------------------------------------------------------
    def prepare(self) -> Any:
        """The per-zoo work every level shares (computed once, see ``prepared``)."""
        return None

    def prepared(self) -> Any:
        key = f"kind:{self.name}"
        if key not in self.ctx.shared:
            self.ctx.shared[key] = self.prepare()
        return self.ctx.shared[key]

    @property
    def cvec(self) -> np.ndarray:
        """ms per image of each model as this kind pays it (a stage's routing time included)."""
        return self.ctx.cvec

    # ---- fitting -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, sacrifice: float, target: float) -> "RouterKind":
        """The estimate rule: the cheapest setting whose val accuracy (minus the margin)
        meets ``target``. Sets ``router_``, ``candidate_``, ``details_``; returns self."""

    @abstractmethod
    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        """Certified selection: this kind's candidates at the level, estimated on ``ctx.val``
        (the select part); ``PoolEntry.family`` is the kind's name."""

    @abstractmethod
    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        """(n_c,) whether candidate ``entry`` answers each certify-part image right."""

    @abstractmethod
    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  candidate: Candidate) -> "RouterKind":
        """Deploy a certified path candidate (None: this kind answering with the reference
        alone). Sets the fitted attributes; returns self."""

    # ---- scoring on test ------------------------------------------------------------------
    @abstractmethod
    def simulate(self, test: TestView) -> np.ndarray:
        """(N,) the model each test image goes to, as the fitted router decides it."""

    def predictions(self, test: TestView, chosen: np.ndarray) -> np.ndarray | None:
        """(N,) the routed answers where they are not the chosen model's own (a committee's
        mean); None: each image gets its chosen model's prediction."""
        return None

    def stages(self) -> Sequence[int] | None:
        """A cascade's stages (costs add up stage by stage), None for one model per image."""
        return None

    def expected_ms(self, chosen: np.ndarray) -> float | None:
        """Expected ms per image of the routed choices (None: the models' cost shares)."""
        return None

    def router_macs(self) -> int:
        return int(self.router_.macs_per_image) if self.router_ is not None else 0

    def routing_accuracy(self, chosen: np.ndarray, test: TestView, ceiling: np.ndarray,
                         policies: dict[str, Any]) -> float | None:
        """How often its choice is the one a bound would make (None: not defined)."""
        return None

    def timing_key(self) -> tuple:
        """A key equal for two fits that route alike (timed once)."""
        return (self.name, repr(self.router_.describe()))

    def run(self, images: torch.Tensor, models: Sequence[torch.nn.Module],
            infos: Sequence[Any], batch_size: int) -> ExecResult:
        """The routed classification of ``images``, executed for real (router in the clock)."""
        return execute_routed(self.router_, images, models, infos, batch_size)

    def settings(self) -> dict[str, Any]:
        """routers.csv ``settings``: the router's description plus the fit's own figures."""
        return {**self.router_.describe(), **self.details_}

    def library_details(self) -> dict[str, Any]:
        """``FittedRouter.details`` of the library API: the settings, model names for model
        indices where the router's description gives indices."""
        return self.settings()

    # ---- artifacts and the page (they work on a Router: no fit needed) ------------------
    @classmethod
    def owns(cls, router: Router) -> bool:
        """Whether ``router`` is one this kind deploys."""
        return type(router) in cls.router_types

    @classmethod
    @abstractmethod
    def state(cls, router: Router) -> dict[str, Any]:
        """The router's settings and weights as plain data (tensors allowed)."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> Router:
        """The router back from ``state``."""

    @classmethod
    def needed_models(cls, router: Router, n_models: int) -> set[int]:
        """Indices of the models the router can choose (the others need not be loaded)."""
        return set(range(n_models))

    @classmethod
    def why(cls, router: Router, scores: np.ndarray, score_names: Sequence[str]
            ) -> list[dict[str, Any]]:
        """Rows explaining one image's choice from its scores (the page's table)."""
        return [{"score": n, "value": float(v)} for n, v in zip(score_names, scores)]

    @classmethod
    def record(cls) -> dict[str, Any]:
        """What the reports need of the kind (RUN/results/router_kinds.json)."""
        return {"name": cls.name, "family": cls.family, "simplicity": cls.simplicity,
                "description": cls.description, **cls.style.to_dict()}


def candidate(kind: type[RouterKind] | RouterKind, val_accuracy: float, cost: float,
              meets: bool) -> Candidate:
    """A selection ``Candidate`` for a kind (its name and simplicity rank)."""
    return Candidate(kind.name, float(val_accuracy), float(cost), bool(meets), kind.simplicity)
