"""The router strip: each router's choice for this image, its answer, and why.

Loaded once at start from the run directory:
- routed classifiers saved by ``evaluate-routers`` under ``RUN/routers/`` (cascade and
  dispatcher), through ``RoutedClassifier.load`` with the server's own models
  (``router.web.routed``);
- oracle policies ``RUN/policies/*.json`` (those fitted over the whole zoo; the base zoo's
  under ``RUN/policies/base/`` are not shown), written by ``evaluate-routers`` with
  ``oracle.policy.Policy.save`` and read here with ``Policy.load``, exactly as saved. The page
  never fits a policy: where there are none, the oracle entry says to run ``evaluate-routers``.
  An oracle routes by the true label, so it applies only to a test sample; its entry shows the
  policy's whole label-to-model table.
A missing artifact becomes an entry that names the command that makes it; the page still works.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.web.entry import POLICIES_HINT, StripEntry
from router.web.routed import load_all, pick_per_group
from zoo.rundir import RunDir


@dataclass
class LoadedPolicy:
    key: str          # file stem (kind-s<level> as evaluate-routers names it), used in the URL
    policy: Any       # oracle.policy.Policy, as saved
    source: str = ""  # the JSON file it was read from

    @property
    def label(self) -> str:
        return f"{self.policy.kind}, sacrifice {100 * float(self.policy.sacrifice):g}%"


class RouterStrip:
    """Routers and oracle policies of one run, loaded once."""

    def __init__(self, run: Path, routers: list[Any], router_errors: list[StripEntry],
                 policies: list[LoadedPolicy], policy_error: str = "",
                 classes: list[str] | None = None):
        self.run = run
        self.routers = routers
        self.router_errors = router_errors
        self.policies = policies
        self.policy_error = policy_error
        self.classes = list(classes or [])    # class names, for the oracle's label table

    @classmethod
    def load(cls, run_dir: RunDir, shared_models: dict[str, tuple[Path, Any, Any]]
             ) -> "RouterStrip":
        """``shared_models``: name -> (checkpoint path, loaded model, DatasetInfo) the server
        already holds; the routers call these same objects (from the batcher's worker: the
        one thread that runs models, so no lock)."""
        routers, errors = load_all(run_dir.root / "routers", run_dir.root, shared_models)
        policies, policy_error = load_policies(run_dir)
        classes = next((list(info.classes) for _, _, info in shared_models.values()
                        if getattr(info, "classes", None)), None)
        return cls(run_dir.root, routers, errors, policies, policy_error, classes)

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
        return self.entries_batch([image], [results], [label], [policy_key])[0]

    def entries_batch(self, images: list[Any], results: list[list[Any]],
                      labels: list[int | None], policy_keys: list[str | None]
                      ) -> list[list[StripEntry]]:
        """``entries`` for K images at once: each router runs once, on the images that show
        it (those whose policy's sacrifice picks it), as one batch."""
        shown: list[list[Any]] = []
        users: dict[str, list[int]] = {}
        for k, key in enumerate(policy_keys):
            chosen = next((p for p in self.policies
                           if p.key == (key or self.default_policy())), None)
            sacrifice = float(chosen.policy.sacrifice) if chosen else None
            shown.append(pick_per_group(self.routers, sacrifice))
            for router in shown[-1]:
                users.setdefault(router.key, []).append(k)
        verdicts: dict[tuple[str, int], StripEntry] = {}
        for router in self.routers:
            ks = users.get(router.key)
            if not ks:
                continue
            try:
                got = router.verdicts([images[k] for k in ks], [labels[k] for k in ks])
            except Exception as e:  # one broken router must not take the page down
                got = [StripEntry(router.title, router.family, "error",
                                  message=f"{router.key}: {type(e).__name__}: {e}")] * len(ks)
            verdicts.update({(router.key, k): v for k, v in zip(ks, got)})
        out = []
        for k in range(len(images)):
            by_name = {r.name: r for r in results[k]}
            entries = [verdicts[(router.key, k)] for router in shown[k]]
            entries += self.router_errors
            entries.append(self._oracle_entry(by_name, labels[k], policy_keys[k]))
            out.append(entries)
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
        label_table = self._label_table(chosen.policy, label)
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
               f"sacrifice {100 * float(pol.sacrifice):g}% against reference {pol.reference}, "
               f"as saved by evaluate-routers ({chosen.source}); the table is its whole "
               "label-to-model map")
        if r is None:
            return StripEntry(name, "oracle", "error", model=model, why=label_table, why_text=why,
                              message=f"policy names {model}, which is not loaded from zoo/")
        return StripEntry(name, "oracle", "ok", model=model, answer=r.pred_class,
                          answer_index=r.pred, correct=r.pred == label, why=label_table,
                          why_text=why)

    def _label_table(self, policy: Any, label: int | None) -> list[dict[str, Any]]:
        """The policy's label-to-model map as saved, one row per label (this image's marked);
        empty for a policy that routes per sample."""
        if policy.label_to_model is None:
            return []
        rows = []
        for c, model in sorted(policy.label_to_model.items()):
            name = self.classes[c] if 0 <= c < len(self.classes) else ""
            rows.append({"true label": f"{c} {name}".strip(), "routes to": model,
                         "this image": "<-" if label == c else ""})
        return rows


def load_policies(run_dir: RunDir) -> tuple[list[LoadedPolicy], str]:
    """The policies ``evaluate-routers`` saved as ``RUN/policies/*.json`` (whole zoo), read as
    they are, or why there are none. Nothing is fitted here."""
    from oracle.policy import Policy
    hint = POLICIES_HINT.format(run=run_dir.root)
    files = sorted(run_dir.policies.glob("*.json")) if run_dir.policies.is_dir() else []
    if not files:
        return [], f"no oracle policy saved under {run_dir.policies}: {hint}"
    out, bad = [], []
    for f in files:
        try:
            out.append(LoadedPolicy(f.stem, Policy.load(f), f"policies/{f.name}"))
        except Exception as e:  # a file that is not a policy: skip it, say so if none load
            bad.append(f"{f.name}: {e}")
    out.sort(key=lambda p: (p.policy.kind, float(p.policy.sacrifice), p.key))
    return out, (f"no saved oracle policy could be read ({'; '.join(bad)}): {hint}"
                 if not out else "")


def _one_row_table(model_names: list[str], by_name: dict[str, Any], label: int) -> Any:
    """This request's answers as a one-sample PredictionTable (what a per-sample oracle needs:
    which models are right on this very image); ``None`` when a policy model is not loaded."""
    from common.tables import PredictionTable
    if any(m not in by_name for m in model_names):
        return None
    preds = np.array([[by_name[m].pred for m in model_names]])
    probs = np.array([[by_name[m].probs for m in model_names]], dtype=np.float16)
    return PredictionTable(list(model_names), np.array([label]), preds, probs,
                           np.array([0]), "test")
