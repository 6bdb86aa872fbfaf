"""The router strip: each router's choice for this image, its answer, and why.

Loaded once at start from the run directory:
- routed classifiers saved by ``evaluate-routers`` under ``RUN/routers/`` (cascade and
  dispatcher), through the router package's own load API;
- oracle policies ``RUN/policies/*.json`` through ``oracle.policy.Policy.load``; where there
  are none (``evaluate-routers`` fits its policies without saving them), the label policies are
  fitted here at start, on the val table with the profiled costs, exactly as
  ``evaluate-routers`` fits them (``oracle.policy.fit_policy``), at the saved routers'
  sacrifice levels. An oracle routes by the true label, so it applies only to a test sample.
A missing artifact becomes an entry that names the command that makes it; the page still works.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.rundir import RunDir

ROUTERS_HINT = "run `evaluate-routers --run {run}` to fit and save the routers"
POLICIES_HINT = ("run `profile-zoo --run {run}` (the oracle policies are fitted on its val "
                 "table and costs.json)")


@dataclass
class StripEntry:
    """One router's verdict on one image (or why there is none)."""

    name: str
    family: str                   # cascade | dispatcher | oracle
    status: str                   # ok | missing | n/a | error
    model: str | None = None      # the zoo model it chose
    answer: str | None = None     # that model's class name
    answer_index: int | None = None
    correct: bool | None = None   # only for test samples
    why: list[dict[str, Any]] = field(default_factory=list)
    why_text: str = ""
    message: str = ""


@dataclass
class LoadedPolicy:
    key: str          # file stem (or kind-s<level> when fitted here), used in the URL
    policy: Any       # oracle.policy.Policy
    source: str = ""  # the JSON file, or "fitted at start on RUN/tables/val.npz"

    @property
    def label(self) -> str:
        return f"{self.policy.kind}, sacrifice {100 * float(self.policy.sacrifice):g}%"


class RouterStrip:
    """Routers and oracle policies of one run, loaded once."""

    def __init__(self, run: Path, routers: list[Any], router_errors: list[StripEntry],
                 policies: list[LoadedPolicy], policy_error: str = "",
                 lock: threading.Lock | None = None):
        self.run = run
        self.routers = routers
        self.router_errors = router_errors
        self.policies = policies
        self.policy_error = policy_error
        self.lock = lock or threading.Lock()  # the service's inference lock (shared models)

    @classmethod
    def load(cls, run_dir: RunDir, shared_models: dict[str, tuple[Path, Any, Any]],
             lock: threading.Lock | None = None) -> "RouterStrip":
        """``shared_models``: name -> (checkpoint path, loaded model, DatasetInfo) the server
        already holds; the routers call these same objects."""
        from router.web import routed
        routers, errors = routed.load_all(run_dir.root / "routers", run_dir.root, shared_models)
        from router.evaluate import DEFAULT_SACRIFICES  # the levels evaluate-routers uses
        levels = sorted({r.sacrifice for r in routers if r.sacrifice is not None})
        policies, policy_error = _load_policies(run_dir, levels or list(DEFAULT_SACRIFICES))
        return cls(run_dir.root, routers, errors, policies, policy_error, lock)

    # ---- choosing the oracle policy --------------------------------------------------
    def policy_options(self) -> list[tuple[str, str]]:
        return [(p.key, p.label) for p in self.policies]

    def default_policy(self) -> str | None:
        """The overlap policy (the original study's rule) closest to a 1% sacrifice."""
        if not self.policies:
            return None
        return min(self.policies, key=lambda p: (p.policy.kind != "overlap",
                                                 abs(float(p.policy.sacrifice) - 0.01),
                                                 p.key)).key

    # ---- per request -----------------------------------------------------------------
    def entries(self, image: Any, results: list[Any], label: int | None,
                policy_key: str | None) -> list[StripEntry]:
        """Entries for one uint8 ``(C, H, W)`` image; ``results`` are this request's cards.

        Of each router group (cascade, dispatcher-label, dispatcher-sample) the one fitted at
        the sacrifice closest to the chosen oracle policy's is shown."""
        from router.web.routed import pick_per_group
        by_name = {r.name: r for r in results}
        chosen = next((p for p in self.policies
                       if p.key == (policy_key or self.default_policy())), None)
        sacrifice = float(chosen.policy.sacrifice) if chosen else None
        out: list[StripEntry] = []
        for router in pick_per_group(self.routers, sacrifice):
            try:
                with self.lock:
                    out.append(router.verdict(image, by_name, label))
            except Exception as e:  # one broken router must not take the page down
                out.append(StripEntry(router.title, router.family, "error",
                                      message=f"{router.key}: {type(e).__name__}: {e}"))
        out += self.router_errors
        out.append(self._oracle_entry(by_name, label, policy_key))
        return out

    def _oracle_entry(self, by_name: dict[str, Any], label: int | None,
                      policy_key: str | None) -> StripEntry:
        if not self.policies:
            return StripEntry("oracle policy", "oracle", "missing", message=self.policy_error or
                              POLICIES_HINT.format(run=self.run))
        key = policy_key or self.default_policy()
        chosen = next((p for p in self.policies if p.key == key), None)
        if chosen is None:
            return StripEntry("oracle policy", "oracle", "error",
                              message=f"unknown policy {key!r}; choose one of "
                                      f"{[p.key for p in self.policies]}")
        name = f"oracle ({chosen.label})"
        if label is None:
            return StripEntry(name, "oracle", "n/a", message=(
                "an oracle routes by the true label, so it is a bound, not a router: it only "
                "applies to a test-set sample; pick one below"))
        pol = chosen.policy
        try:
            labels = np.array([label], dtype=np.int64)
            table = _one_row_table(pol.model_names, by_name, label)
            idx = int(np.asarray(pol.route(labels, table))[0])
        except Exception as e:
            return StripEntry(name, "oracle", "error", message=f"policy {chosen.key}: {e}")
        model = pol.model_names[idx]
        r = by_name.get(model)
        why = (f"true label {label} -> {model}: the {pol.kind} policy fitted on val at "
               f"sacrifice {100 * float(pol.sacrifice):g}% against reference {pol.reference} "
               f"({chosen.source})")
        if r is None:
            return StripEntry(name, "oracle", "error", model=model, why_text=why,
                              message=f"policy names {model}, which is not loaded from zoo/")
        return StripEntry(name, "oracle", "ok", model=model, answer=r.pred_class,
                          answer_index=r.pred, correct=r.pred == label, why_text=why)


def _load_policies(run_dir: RunDir, levels: list[float]) -> tuple[list[LoadedPolicy], str]:
    """Policies saved under ``RUN/policies/``, else fitted here on val (see the module doc)."""
    from oracle.policy import Policy
    files = sorted(run_dir.policies.glob("*.json")) if run_dir.policies.is_dir() else []
    if not files:
        return fit_policies(run_dir, levels)
    out, bad = [], []
    for f in files:
        try:
            out.append(LoadedPolicy(f.stem, Policy.load(f), f.name))
        except Exception as e:  # a file that is not a policy: skip it, say so if none load
            bad.append(f"{f.name}: {e}")
    out.sort(key=lambda p: (p.policy.kind, float(p.policy.sacrifice)))
    return out, ("; ".join(bad) if not out else "")


def fit_policies(run_dir: RunDir, levels: list[float]) -> tuple[list[LoadedPolicy], str]:
    """Every label policy kind at every level, fitted on ``RUN/tables/val.npz`` with the
    ms/image of ``RUN/costs.json`` (what ``evaluate-routers`` does); or why that cannot be."""
    from oracle.policy import LABEL_KINDS, fit_policy
    from oracle.table import CostTable, PredictionTable
    hint = POLICIES_HINT.format(run=run_dir.root)
    if not (run_dir.tables / "val.npz").exists() or not run_dir.costs.exists():
        return [], (f"no oracle policy: {run_dir.policies} holds none and there is no val table "
                    f"or costs.json to fit them on; {hint}")
    try:
        val = PredictionTable.load(run_dir.tables, "val")
        costs = CostTable.load(run_dir.costs).vector(val.model_names, "ms_per_image")
        out = [LoadedPolicy(f"{kind}-s{s:g}", fit_policy(kind, val, costs, s),
                            "fitted at start on tables/val.npz with costs.json")
               for kind in LABEL_KINDS for s in levels]
    except Exception as e:  # a stale or partial table must not stop the server
        return [], f"the oracle policies cannot be fitted on {run_dir.tables / 'val.npz'} ({e}); {hint}"
    return out, ""


def _one_row_table(model_names: list[str], by_name: dict[str, Any], label: int) -> Any:
    """This request's answers as a one-sample PredictionTable (what a per-sample oracle needs:
    which models are right on this very image); ``None`` when a policy model is not loaded."""
    from oracle.table import PredictionTable
    if any(m not in by_name for m in model_names):
        return None
    preds = np.array([[by_name[m].pred for m in model_names]])
    probs = np.array([[by_name[m].probs for m in model_names]], dtype=np.float16)
    return PredictionTable(list(model_names), np.array([label]), preds, probs,
                           np.array([0]), "test")
