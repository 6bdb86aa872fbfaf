"""The two learned dispatchers as router kinds (``router.dispatcher`` holds the network, its
training and its rules).

Per zoo each trains its own small CNN on the images of the table it chooses on, within a
quarter of the cheapest model's MACs (and a time cap), and times it:

- ``dispatcher-label`` predicts the image's label and maps it through an oracle policy fitted
  on the same table at the level; where that is not cheaper than the reference with the
  network's own time added, it sends everything to the reference and skips its network;
- ``dispatcher-sample`` predicts each model's chance of being right and takes the cheapest
  model whose chance clears tau, tau chosen per level on its held-out part.

Their estimates come from the small held-out part that also stopped their training, so on a
certified path they are tested after the table-simulated kinds (``path_group = 1``).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from router.base import Router, accuracy_lower_bound, paired_se
from router.certify import PoolEntry
from router.dispatcher import Dispatcher, DispatcherArch, DispatcherConfig, DispatcherFit, \
    DispatcherNet, choose_threshold, dispatcher_ms_per_image, dispatcher_scores, \
    fit_dispatcher, threshold_candidates
from router.kind import KindStyle, RouterKind, TestView, candidate
from router.selection import Candidate
from zoo.data import DatasetInfo, normalize

EPS = 1e-9


def routed_ms(chosen: np.ndarray, cvec: np.ndarray, router: Dispatcher, net_ms: float) -> float:
    """Expected ms per image a dispatcher pays: its models plus its network when it runs it."""
    share = np.bincount(chosen, minlength=len(cvec)) / max(1, len(chosen))
    return float(share @ cvec) + (0.0 if router.constant_choice is not None else net_ms)


def label_to_model(policy: Any, n_classes: int) -> np.ndarray:
    """(C,) the model an oracle policy sends each label to."""
    idx = policy.label_indices()
    return np.array([idx.get(c, policy.reference_index) for c in range(n_classes)],
                    dtype=np.int64)


def label_dispatcher_at(fit: DispatcherFit, net_ms: float, val: Any, cvec: np.ndarray,
                        ref: int, policy: Any, sacrifice: float,
                        z: float) -> tuple[Dispatcher, bool, Candidate]:
    """The label-mode dispatcher at one level: its predicted label mapped through ``policy``
    (an oracle policy fitted on val). Where the policy's expected cost on val plus the
    network's own is not below the reference's, it runs the reference alone and skips its
    network (``skipped``). Its candidate is scored on the dispatcher's held-out part of val.
    Returns (dispatcher, skipped, candidate)."""
    dl = Dispatcher.from_fit(fit, cvec, policy=policy, fallback=ref)
    skip = bool(policy.cost(cvec) + net_ms >= cvec[ref] and dl.constant_choice is None)
    if skip:
        dl = Dispatcher.to_one_model(fit, cvec, ref)
    hold = fit.holdout_index
    ch = dl.choose(fit.holdout_scores)
    right = val.correct[hold, ch]
    hold_ref = val.correct[hold, ref]
    bound = float(accuracy_lower_bound(right, hold_ref, z)[0])
    cand = candidate(LabelDispatcherKind, float(right.mean()), routed_ms(ch, cvec, dl, net_ms),
                     bound >= float(hold_ref.mean()) - sacrifice - EPS)
    return dl, skip, cand


def sample_dispatcher_at(fit: DispatcherFit, net_ms: float, val: Any, cvec: np.ndarray,
                         ref: int, sacrifice: float, z: float) -> tuple[Dispatcher, Candidate]:
    """The sample-mode dispatcher at one level: the cheapest model predicted right with chance
    >= tau, tau chosen on the dispatcher's held-out part of val (its target: the reference's
    accuracy there minus ``sacrifice``, with the margin ``z``)."""
    hold_correct = val.correct[fit.holdout_index]
    tau, h_acc, h_cost = choose_threshold(fit.holdout_scores, hold_correct, cvec,
                                          float(hold_correct[:, ref].mean()) - sacrifice,
                                          fallback=ref, z=z, router_cost=net_ms)
    ds = Dispatcher.from_fit(fit, cvec, threshold=tau, fallback=ref)
    return ds, candidate(SampleDispatcherKind, h_acc, h_cost, True)


class _DispatcherKind(RouterKind):
    """What both dispatchers share: the network trained per zoo, its scores, the artifact."""

    mode: str = ""
    needs_images = True
    path_group = 1
    router_types = (Dispatcher,)

    def prepare(self) -> tuple[DispatcherFit, float, np.ndarray | None]:
        """(fit on ``ctx.val``'s images, network ms per image, scores on the certify part)."""
        ctx, s = self.ctx, self.ctx.settings
        if ctx.images is None or ctx.info is None:
            raise ValueError(f"{self.name} trains on the val images: the fit needs them")
        t0 = time.perf_counter()
        cfg = s.dispatcher or DispatcherConfig(seed=s.seed)
        pinned = (s.dispatcher_archs or {}).get(self.mode) or {}
        fit = fit_dispatcher(self.mode, ctx.images, ctx.val, ctx.info, s.dispatcher_max_macs,
                             cfg, max_ms=s.dispatcher_max_ms,
                             arch=DispatcherArch.from_dict(pinned["arch"]) if pinned else None)
        h = min(fit.history, key=lambda e: e["holdout_loss"]) if fit.history else {}
        d_ms = (float(pinned["ms_per_image"]) if "ms_per_image" in pinned else
                dispatcher_ms_per_image(fit.arch, normalize(ctx.images[:1024], ctx.info)))
        max_ms = s.dispatcher_max_ms
        ctx.record[f"dispatcher_{self.mode}"] = {
            "arch": fit.arch.to_dict(), "macs": fit.macs, "ms_per_image": d_ms,
            "time_cap_met": max_ms is None or d_ms <= max_ms,
            "train_seconds": time.perf_counter() - t0, "holdout": len(fit.holdout_index),
            "history": fit.history}
        cap = "" if max_ms is None else f", {d_ms:.4f} ms/image (cap {max_ms:.4f})"
        ctx.log(f"  [{ctx.zoo}] dispatcher[{self.mode}]: {fit.macs} MACs/image (cap "
                f"{s.dispatcher_max_macs:.0f} = 1/4 of the cheapest model){cap}, width "
                f"{fit.arch.width}, downsample {fit.arch.downsample}, trained in "
                f"{time.perf_counter() - t0:.1f}s, kept epoch {h.get('epoch', 0)} (held-out acc "
                f"{h.get('holdout_accuracy', float('nan')):.3f})")
        scores_c = None
        if ctx.certify_images is not None:
            with torch.inference_mode():
                scores_c = dispatcher_scores(fit.net, ctx.certify_images, ctx.info,
                                             self.mode).numpy()
        return fit, d_ms, scores_c

    def correct_on_certify(self, entry: PoolEntry) -> np.ndarray:
        val_c = self.ctx.certify
        ch = entry.key.choose(self.prepared()[2])
        return val_c.correct[np.arange(val_c.n_samples), ch]

    def test_scores(self, test: TestView) -> np.ndarray:
        """The network's scores on the test images (computed once per zoo)."""
        key = f"scores:{self.name}"
        if key not in test.shared:
            with torch.inference_mode():
                test.shared[key] = dispatcher_scores(self.prepared()[0].net, test.images,
                                                     test.info, self.mode).numpy()
        return test.shared[key]

    def simulate(self, test: TestView) -> np.ndarray:
        return self.router_.choose(self.test_scores(test))

    def expected_ms(self, chosen: np.ndarray) -> float:
        return routed_ms(chosen, self.cvec, self.router_, self.prepared()[1])

    def library_details(self) -> dict[str, Any]:
        """The settings plus the network's architecture, MACs and measured ms per image."""
        fit, net_ms, _ = self.prepared()
        return {**self.settings(), "arch": fit.arch.to_dict(), "macs": fit.macs,
                "ms_per_image": net_ms}

    @classmethod
    def owns(cls, router: Router) -> bool:
        return isinstance(router, Dispatcher) and router.mode == cls.mode

    @classmethod
    def state(cls, router: Router) -> dict[str, Any]:
        return {"mode": router.mode, "arch": router.net.arch.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in router.net.state_dict().items()},
                "costs": router.costs.tolist(),
                "label_to_model": (None if router.label_to_model is None
                                   else router.label_to_model.tolist()),
                "threshold": router.threshold, "fallback": router.fallback,
                "macs": router.network_macs}

    @classmethod
    def from_state(cls, state: dict[str, Any], model_names: list[str],
                   info: DatasetInfo | None) -> Router:
        net = DispatcherNet(DispatcherArch.from_dict(state["arch"]))
        net.load_state_dict(state["state_dict"])
        return Dispatcher(state["mode"], net, info, model_names, np.asarray(state["costs"]),
                          label_to_model=state["label_to_model"], threshold=state["threshold"],
                          fallback=state["fallback"], macs=state["macs"])

    @classmethod
    def needed_models(cls, router: Router, n_models: int) -> set[int]:
        if router.constant_choice is not None:
            return {router.constant_choice}
        if router.mode == "label":
            return {int(m) for m in router.label_to_model}
        return set(range(n_models))


class LabelDispatcherKind(_DispatcherKind):
    """Predict the label from the image; route it through an oracle policy's label table."""

    name = "dispatcher-label"
    family = "dispatcher"
    mode = "label"
    style = KindStyle("tab:orange", "D", 4.0)
    simplicity = 4
    description = "dispatcher CNN predicting the label, mapped through an oracle policy"

    def _set(self, router: Dispatcher, skipped: bool, cand: Candidate) -> "LabelDispatcherKind":
        self.router_, self.candidate_ = router, cand
        self.details_ = {"policy": self.ctx.settings.label_policy,
                         "network_skipped": router.constant_choice is not None,
                         "skipped_because_not_cheaper": skipped,
                         "val_meets_target": cand.meets_target}
        return self

    def fit(self, sacrifice: float, target: float) -> "LabelDispatcherKind":
        fit, net_ms, _ = self.prepared()
        ctx = self.ctx
        pol = ctx.policy(ctx.settings.label_policy, sacrifice)
        d, skip, cand = label_dispatcher_at(fit, net_ms, ctx.val, self.cvec, ctx.ref, pol,
                                            sacrifice, ctx.settings.margin_z)
        return self._set(d, skip, cand)

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        fit, net_ms, _ = self.prepared()
        ctx, cvec, ref = self.ctx, self.cvec, self.ctx.ref
        hold = fit.holdout_index
        hold_correct = ctx.val.correct[hold]
        pol = ctx.policy(ctx.settings.label_policy, max(sacrifice, 0.0))
        d = Dispatcher.from_fit(fit, cvec, policy=pol, fallback=ref)
        if d.constant_choice is not None:
            return []
        ch = d.choose(fit.holdout_scores)
        r = hold_correct[np.arange(len(hold)), ch]
        hr = hold_correct[:, ref]
        se = float(paired_se(int((r & ~hr).sum()), int((~r & hr).sum()), len(hold)))
        return [PoolEntry(self.name, d, routed_ms(ch, cvec, d, net_ms),
                          float(hr.mean()) - float(r.mean()), se, len(hold))]

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "LabelDispatcherKind":
        if entry is None:
            return self._set(Dispatcher.to_one_model(self.prepared()[0], self.cvec, self.ctx.ref),
                             True, cand)
        return self._set(entry.key, False, cand)

    def simulate(self, test: TestView) -> np.ndarray:
        scores = self.test_scores(test)
        self.ctx.record.setdefault("dispatcher_label", {})["test_label_accuracy"] = float(
            (scores.argmax(1) == test.table.labels).mean())
        return self.router_.choose(scores)

    def routing_accuracy(self, chosen: np.ndarray, test: TestView, ceiling: np.ndarray,
                         policies: dict[str, Any]) -> float:
        """How often it picks the model the oracle policy would pick from the true label."""
        pol = policies[self.ctx.settings.label_policy]
        return float((chosen == pol.route(test.table.labels)).mean())

    def timing_key(self) -> tuple:
        return ("disp-label", tuple(self.router_.label_to_model))

    @classmethod
    def why(cls, router: Router, scores: np.ndarray, score_names: Sequence[str]
            ) -> list[dict[str, Any]]:
        """The top-3 predicted labels and the model each routes to."""
        top = np.argsort(-scores)[:3]
        return [{"predicted label": score_names[k].split(":", 1)[-1], "p": float(scores[k]),
                 "routes to": router.model_names[int(router.label_to_model[k])]} for k in top]


class SampleDispatcherKind(_DispatcherKind):
    """Predict each model's chance of being right; the cheapest one above tau answers."""

    name = "dispatcher-sample"
    family = "dispatcher"
    mode = "sample"
    style = KindStyle("tab:green", "v", 5.0)
    simplicity = 3
    description = "dispatcher CNN predicting each model's chance of being right"

    def _set(self, router: Dispatcher, cand: Candidate) -> "SampleDispatcherKind":
        self.router_, self.candidate_ = router, cand
        self.details_ = {"network_skipped": router.constant_choice is not None}
        return self

    def fit(self, sacrifice: float, target: float) -> "SampleDispatcherKind":
        fit, net_ms, _ = self.prepared()
        ctx = self.ctx
        d, cand = sample_dispatcher_at(fit, net_ms, ctx.val, self.cvec, ctx.ref, sacrifice,
                                       ctx.settings.margin_z)
        return self._set(d, cand)

    def path_entries(self, sacrifice: float) -> list[PoolEntry]:
        fit, net_ms, _ = self.prepared()
        ctx, cvec, ref = self.ctx, self.cvec, self.ctx.ref
        hold = fit.holdout_index
        hold_correct = ctx.val.correct[hold]
        ref_hold = float(hold_correct[:, ref].mean())
        taus, right, cost = threshold_candidates(fit.holdout_scores, hold_correct, cvec, ref,
                                                 router_cost=net_ms)
        hr = hold_correct[:, ref]
        ses = paired_se((right & ~hr).sum(1), (~right & hr).sum(1), len(hold))
        out = []
        for t, r, c, se in zip(taus, right, cost, ses):
            if 0.0 < t <= 1.0:          # tau 0 / above 1 are single models, already pooled
                d = Dispatcher.from_fit(fit, cvec, threshold=float(t), fallback=ref)
                out.append(PoolEntry(self.name, d, float(c), ref_hold - float(r.mean()),
                                     float(se), len(hold)))
        return out

    def fit_entry(self, entry: PoolEntry | None, sacrifice: float,
                  cand: Candidate) -> "SampleDispatcherKind":
        if entry is None:
            return self._set(Dispatcher.from_fit(self.prepared()[0], self.cvec, threshold=1.01,
                                                 fallback=self.ctx.ref), cand)
        return self._set(entry.key, cand)

    def routing_accuracy(self, chosen: np.ndarray, test: TestView, ceiling: np.ndarray,
                         policies: dict[str, Any]) -> float:
        """How often it picks the per-sample ceiling's model (the cheapest right one)."""
        return float((chosen == ceiling).mean())

    def timing_key(self) -> tuple:
        return ("disp-sample", self.router_.threshold)

    @classmethod
    def why(cls, router: Router, scores: np.ndarray, score_names: Sequence[str]
            ) -> list[dict[str, Any]]:
        """Each model's predicted chance of being right against tau."""
        th = router.threshold
        return [{"model": n.split(":", 1)[-1], "p(right)": float(v),
                 "threshold": float(th) if th is not None else "",
                 "clears": "yes" if th is not None and v >= th else "no"}
                for n, v in zip(score_names, scores)]
