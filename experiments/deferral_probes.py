"""Probes behind the README's "learned router" paragraph (issue 21): ideas measured and NOT
shipped, kept so their figures can be re-made. Not part of the library; nothing here selects
on test (heads and fine-tunes fit on train, curves are read on val; the ensembling cascade is
selected on val like the shipped cascade, and its test accuracy is only reported). Expected
speedups use profile-zoo's measured images/s (``RUN/costs.json``).

    python experiments/deferral_probes.py --run runs/standard ensemble
    python experiments/deferral_probes.py --run runs/standard train-head
    python experiments/deferral_probes.py --run runs/standard finetune --lam 1 --hard wrong
    python experiments/deferral_probes.py --run runs/standard skip
    python experiments/deferral_probes.py --run runs/standard specialist --arch tiny_vgg2
    python experiments/deferral_probes.py --run runs/standard oof-head --folds 3 --amp off --with-reference

``ensemble``: a cascade whose stage k answers with the mean probabilities of stages 1..k and
stops on that mean's top probability, against the plain cascade, both selected on val with
the 1-SE margin; expected speedup over the best single model from the run's measured
images/s. ``train-head``: logistic deferral heads for the cheapest model fitted on the *train*
split (9x more samples than val) on its probability features, its penultimate activations,
or both; deferral curves to the best model on val. ``finetune``: the cheapest model
fine-tuned 2 epochs with a deferral-aware loss (cross-entropy on train samples it gets
right, cross-entropy to the uniform distribution on the ones it gets wrong, after Enomoto and
Eda 2021); its val accuracy and deferral curve. ``skip``: a three-stage cascade whose first
stage may also send an input straight to the last model (confidence below a second, lower
threshold), after Bolukbasi et al. 2017, against the same chains without the jump, selected
on val with the 1-SE margin. ``specialist``: the case where Jitkrittum et al. expect a learned
deferral rule to beat max-softmax: a zoo member that is a specialist. A copy of ``--arch``
(the zoo's recipe) is trained on the train split for the four confusable upper-body classes
(T-shirt, pullover, coat, shirt) plus one "other" class; as a 10-class member its "other"
probability is spread over the six other classes. The shipped cascade and the shipped
cross-fitted learned cascade are then selected on val (1-SE margin) over the zoo with and
without it, and scored on test; its cost is taken to be the same architecture's measured
ms/image (the last layer has 5 outputs instead of 10). ``oof-head``: deferral heads learned
from honest (out-of-fold) mistakes on the train split instead of val's 6,000 images: the train
split is cut into ``--folds`` parts, and per part a copy of the cheapest model and of the
reference (the zoo's recipes) is trained on the others and predicts it; heads (logistic and
gradient-boosted, on the probability features; "the cheap model is right" or "deferring gains")
are fitted on those ~54k out-of-fold rows and read on val, for the deployed cheap model and
for each copy (probability features transfer between copies; penultimate activations do not).
The cheap model's copies alone give the "is right" heads (7 min, float32, 2-core Ice Lake);
``--with-reference`` also trains the reference's copies (21 more minutes there, reusing the
cheap copies' cache) for a "deferring gains" head. ``--amp bf16`` only on native bf16.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.base import least_cost_meeting, paired_se, table_precision  # noqa: E402
from router.cascade import sweep_chain, threshold_grid  # noqa: E402
from router.deferral import deferral_curve, deferral_features  # noqa: E402

SHARES = (0.05, 0.1, 0.2, 0.3)


def load_tables(run: Path):
    out = {}
    for split in ("val", "test"):
        z = np.load(run / "tables" / f"{split}.npz")
        out[split] = ([str(n) for n in z["model_names"]], z["labels"], table_precision(z["probs"]))
    return out


def measured_ms(run: Path, names: list[str]) -> np.ndarray:
    """ms per image of each model from profile-zoo's ``RUN/costs.json`` (images/s at batch
    256): a file evaluate-routers does not rewrite, so the probes' figures do not move when
    it is re-run."""
    import json
    models = json.loads((run / "costs.json").read_text())["models"]
    return np.array([1000.0 / float(models[n]["images_per_second"]) for n in names])


def _stage_probs(P, chain, j, ensemble):
    return P[:, list(chain[:j + 1])].mean(axis=1) if ensemble else P[:, chain[j]]


def _stage_arrays(P, y, chain, ensemble):
    """(N, k) confidence and correctness of each stage's answer: its own model's, or (with
    ``ensemble``) the mean probabilities of the stages run so far."""
    stage = [_stage_probs(P, chain, j, ensemble) for j in range(len(chain))]
    return (np.stack([p.max(1) for p in stage], axis=1),
            np.stack([p.argmax(1) == y for p in stage], axis=1))


def _sweep(P, y, chain, cost, ref_right, ensemble, grids=None):
    """The shipped cascade's sweep (``router.cascade.sweep_chain``) over the stage arrays:
    accuracy, expected cost, thresholds and paired SE to the reference of every threshold
    combination (``grids``: per non-final stage; default the cascade's own grid)."""
    conf, corr = _stage_arrays(P, y, chain, ensemble)
    k = len(chain)
    if grids is None:
        grids = [threshold_grid(conf[:, j], 24) for j in range(k - 1)]
    acc, c, th, gain, loss = sweep_chain(conf, corr, cost[list(chain)], list(range(k)), grids,
                                          ref_right)
    return acc, c, th, paired_se(gain, loss, len(y))


def _zoo_indices(names: list[str]) -> dict[str, list[int]]:
    """Model indices per zoo: "all", and "base" (no compressed variant: no "-" in the name)."""
    return {"all": list(range(len(names))),
            "base": [i for i, n in enumerate(names) if "-" not in n]}


def zoo_setups(run: Path):
    """Per zoo ("all", "base"): (zoo, names, val (y, P), test (y, P), ms per image, the
    reference (most accurate on val, cheaper on ties), its val correctness, the zoo's model
    indices cheapest first)."""
    t = load_tables(run)
    names, yv, Pv = t["val"]
    _, yt, Pt = t["test"]
    cost = measured_ms(run, names)
    for zoo, idx in _zoo_indices(names).items():
        acc = np.array([(Pv[:, i].argmax(1) == yv).mean() for i in idx])
        ref = idx[int(np.lexsort((cost[idx], -acc))[0])]
        yield (zoo, names, (yv, Pv), (yt, Pt), cost, ref, Pv[:, ref].argmax(1) == yv,
               sorted(idx, key=lambda i: cost[i]))


def probe_ensemble(run: Path, sacrifices=(0.0, 0.005, 0.01, 0.02)) -> None:
    for zoo, names, (yv, Pv), (yt, Pt), cost, ref, ref_right, order in zoo_setups(run):
        for ensemble in (False, True):
            rows = []
            for k in (1, 2, 3):
                for chain in itertools.combinations(order, k):
                    a, c, th, se = _sweep(Pv, yv, chain, cost, ref_right, ensemble)
                    rows += [(a[i] - se[i], c[i], chain, th[i]) for i in range(len(a))]
            bound = np.array([r[0] for r in rows])
            costs = np.array([r[1] for r in rows])
            for s in sacrifices:
                i = least_cost_meeting(bound, costs, float(ref_right.mean()) - s)
                _, _, chain, th = rows[i]
                test_acc, spent, _, _ = _sweep(Pt, yt, chain, cost, Pt[:, ref].argmax(1) == yt,
                                               ensemble, grids=[np.array([t]) for t in th])
                print(f"{zoo:5s} {'ensembling' if ensemble else 'plain':10s} s={s:<6g} "
                      f"{' -> '.join(names[m] for m in chain):60s} test {100 * test_acc[0]:.2f}% "
                      f"expected {cost[ref] / spent[0]:.2f}x best single")


def _load_bundle(run: Path):
    """The run's data splits, as its config prepares them."""
    from zoo.data import prepare_data
    from zoo.rundir import RunDir
    rd = RunDir(run)
    return prepare_data(rd.root, **rd.load_config().data_kwargs())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def _cheap_and_best_names(run: Path) -> tuple[str, str]:
    """The base zoo's cheapest model and reference, as ``zoo_setups`` picks them."""
    _, names, _, _, _, best, _, order = next(z for z in zoo_setups(run) if z[0] == "base")
    return names[order[0]], names[best]


def _cheap_and_best(run: Path):
    """The data, and the base zoo's cheapest model and reference loaded with their
    preprocessing."""
    from zoo.checkpoint import load_model, preprocess_of
    from zoo.rundir import RunDir
    bundle = _load_bundle(run)
    cheap, best = _cheap_and_best_names(run)
    loaded = []
    for name in (cheap, best):
        model, ckpt = load_model(RunDir(run).checkpoint(name))
        loaded.append((model, preprocess_of(ckpt, bundle.info)))
    return bundle, loaded[0], loaded[1], cheap, best


def _fresh_copy(run: Path, name: str, input_size, seed: int, arch_overrides=None,
                **train_overrides):
    """An untrained model of zoo member ``name``'s architecture (seeded) and its card's
    training recipe, with the given overrides."""
    from zoo.registry import arch_from_dict, build_arch
    from zoo.rundir import RunDir
    from zoo.train import TrainConfig
    card = RunDir(run).read_card(name)
    torch.manual_seed(seed)
    model = build_arch(arch_from_dict(dict(card["arch"], **(arch_overrides or {})), input_size))
    cfg = TrainConfig.from_dict(dict(card["train_config"], seed=seed, **train_overrides))
    return model, cfg


@torch.inference_mode()
def _forward(model, info, x, features=False):
    from zoo.preprocess import prepare
    model.eval()
    feats = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    h = last.register_forward_hook(lambda mod, i, o: feats.append(i[0].detach()))
    probs = torch.cat([torch.softmax(model(prepare(x[s:s + 1024], info)).float(), 1)
                       for s in range(0, len(x), 1024)]).numpy()
    h.remove()
    return (probs, torch.cat(feats).numpy()) if features else probs


def _curve(tag, score, first_right, ref_right):
    acc = deferral_curve(score, first_right, ref_right, SHARES)
    print(f"{tag:40s} " + " ".join(f"{s:.0%}: {100 * a:.2f}" for s, a in zip(SHARES, acc)))


def probe_train_head(run: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    bundle, (m1, i1), (m4, i4), cheap, best = _cheap_and_best(run)
    p1t, ft = _forward(m1, i1, bundle.train.images, features=True)
    p1v, fv = _forward(m1, i1, bundle.val.images, features=True)
    p4v = _forward(m4, i4, bundle.val.images)
    yt, yv = bundle.train.labels.numpy(), bundle.val.labels.numpy()
    c1t, c1v, c4v = p1t.argmax(1) == yt, p1v.argmax(1) == yv, p4v.argmax(1) == yv
    print(f"{cheap} -> {best}; {cheap} right on {c1t.mean():.2%} of train, {c1v.mean():.2%} of val;"
          f" val accuracy with the given share deferred:")
    _curve("max-softmax", p1v.max(1), c1v, c4v)
    _curve("ideal (uses the label)", c1v.astype(float) - c4v, c1v, c4v)
    feats = {"probability features": (deferral_features(p1t), deferral_features(p1v)),
             "penultimate": (ft, fv),
             "both": (np.hstack([ft, deferral_features(p1t)]),
                      np.hstack([fv, deferral_features(p1v)]))}
    for name, (xt, xv) in feats.items():
        sc = StandardScaler().fit(xt)
        for C in (0.01, 0.1, 1.0):
            lr = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(xt), c1t)
            _curve(f"train head: {name}, C={C}", lr.predict_proba(sc.transform(xv))[:, 1], c1v, c4v)


def probe_finetune(run: Path, lam: float, hard: str, epochs: int = 2, seed: int = 0) -> None:
    from zoo.preprocess import prepare
    torch.manual_seed(seed)
    bundle, (m1, i1), (m4, i4), cheap, best = _cheap_and_best(run)
    x, y = bundle.train.images, bundle.train.labels
    yv = bundle.val.labels.numpy()
    c4v = _forward(m4, i4, bundle.val.images).argmax(1) == yv
    p1t = _forward(m1, i1, x)
    wrong = torch.as_tensor(p1t.argmax(1) != y.numpy() if hard == "wrong"
                            else p1t[np.arange(len(y)), y.numpy()] < 0.9)

    def report(tag):
        p = _forward(m1, i1, bundle.val.images)
        c = p.argmax(1) == yv
        _curve(f"{tag} (val acc {100 * c.mean():.2f})", p.max(1), c, c4v)

    report(f"{cheap} as trained")
    opt = torch.optim.Adam(m1.parameters(), lr=1e-4)
    for ep in range(epochs):
        m1.train()
        perm = torch.randperm(len(x))
        for s in range(0, len(x), 256):
            i = perm[s:s + 256]
            logits = m1(prepare(x[i], i1))
            ce = torch.nn.functional.cross_entropy(logits, y[i], reduction="none")
            to_uniform = -torch.log_softmax(logits, 1).mean(1)
            h = wrong[i].float()
            loss = ((1 - h) * ce).mean() + lam * (h * to_uniform).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        report(f"fine-tuned lam={lam} hard={hard} epoch {ep + 1}")


def probe_skip(run: Path, sacrifices=(0.0, 0.005, 0.01, 0.02)) -> None:
    for zoo, names, (yv, Pv), (yt, Pt), cost, ref, ref_right, order in zoo_setups(run):
        bound, costs, jump_t, setting = [], [], [], []
        for chain in itertools.combinations(order, 3):
            a, b, c = chain
            ca, cb = Pv[:, a].max(1), Pv[:, b].max(1)
            ra, rb, rc = [Pv[:, m].argmax(1) == yv for m in chain]
            g2 = threshold_grid(cb, 24)
            g0 = np.unique(np.concatenate([[0.0], np.quantile(ca, np.linspace(0, 0.5, 9))]))
            for t1 in threshold_grid(ca, 24):
                stop_a = ca >= t1
                for t0 in g0[g0 <= t1]:
                    jump = ~stop_a & (ca < t0)
                    go_b = ~stop_a & ~jump
                    stop_b = go_b[None] & (cb[None] >= g2[:, None])
                    to_c = jump[None] | (go_b[None] & ~stop_b)
                    right = (stop_a & ra)[None] | (stop_b & rb[None]) | (to_c & rc[None])
                    se = paired_se((right & ~ref_right).sum(1), (~right & ref_right).sum(1),
                                   len(yv))
                    bound.append(right.mean(1) - se)
                    costs.append(cost[a] + go_b.mean() * cost[b] + to_c.mean(1) * cost[c])
                    jump_t.append(np.full(len(g2), t0))
                    setting += [(chain, t0, t1, t2) for t2 in g2]
        bound, costs, jump_t = np.concatenate(bound), np.concatenate(costs), np.concatenate(jump_t)
        for s in sacrifices:
            for label, ok in (("no jump", jump_t == 0), ("may jump", np.ones(len(bound), bool))):
                i = least_cost_meeting(np.where(ok, bound, -1.0), costs,
                                       float(ref_right.mean()) - s)
                (a, b, c), t0, t1, t2 = setting[i]
                ca, cb = Pt[:, a].max(1), Pt[:, b].max(1)
                stop_a = ca >= t1
                jump = ~stop_a & (ca < t0)
                go_b = ~stop_a & ~jump
                stop_b = go_b & (cb >= t2)
                to_c = jump | (go_b & ~stop_b)
                right = ((stop_a & (Pt[:, a].argmax(1) == yt))
                         | (stop_b & (Pt[:, b].argmax(1) == yt))
                         | (to_c & (Pt[:, c].argmax(1) == yt)))
                spent = cost[a] + go_b.mean() * cost[b] + to_c.mean() * cost[c]
                chain_text = " -> ".join(names[m] for m in (a, b, c))
                print(f"{zoo:5s} {label:9s} s={s:<6g} {chain_text:60s} jump below {t0:.3f}: "
                      f"{jump.mean():.1%} jump; test {100 * right.mean():.2f}% "
                      f"expected {cost[ref] / spent:.2f}x best single")


SPECIALIST_GROUP = (0, 2, 4, 6)          # T-shirt/top, Pullover, Coat, Shirt


def _to_group_labels(labels: torch.Tensor, group=SPECIALIST_GROUP) -> torch.Tensor:
    """Class k of the group -> its position in the group; every other class -> len(group)."""
    out = torch.full_like(labels, len(group))
    for i, k in enumerate(group):
        out[labels == k] = i
    return out


def _group_probs_to_classes(p: np.ndarray, n_classes: int, group=SPECIALIST_GROUP) -> np.ndarray:
    """(N, len(group) + 1) specialist probabilities -> (N, n_classes): the group's classes get
    their own, the "other" probability is spread evenly over the remaining classes."""
    rest = [k for k in range(n_classes) if k not in group]
    out = np.zeros((len(p), n_classes), dtype=np.float64)
    out[:, list(group)] = p[:, :len(group)]
    out[:, rest] = p[:, len(group):] / len(rest)
    return out


def _train_specialist(run: Path, arch_name: str, epochs: int, amp: str) -> dict[str, np.ndarray]:
    """Train (or reload) the specialist; its 10-class probabilities on val and test."""
    from dataclasses import replace
    from zoo.data.types import ImageSet
    from zoo.train import fit
    out_dir = run / "probes"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"specialist-{arch_name}-{epochs}ep.npz"
    if out.exists():
        return _load_npz(out)
    bundle = _load_bundle(run)
    model, cfg = _fresh_copy(run, arch_name, bundle.info.input_size, 0,
                             {"num_classes": len(SPECIALIST_GROUP) + 1}, epochs=epochs, amp=amp)
    info = replace(bundle.info, num_classes=len(SPECIALIST_GROUP) + 1,
                   classes=[bundle.info.classes[k] for k in SPECIALIST_GROUP] + ["other"])
    train, val = (ImageSet(s.images, _to_group_labels(s.labels), s.ids)
                  for s in (bundle.train, bundle.val))
    res = fit(model, train, val, info, cfg, state_path=out_dir / f"specialist-{arch_name}.state",
              desc=f"specialist {arch_name}")
    probs = {}
    for split in ("val", "test"):
        images = getattr(bundle, split)
        p5 = _forward(model, info, images.images)
        probs[split] = _group_probs_to_classes(p5, bundle.info.num_classes)
        probs[f"{split}_labels"] = images.labels.numpy()
    print(f"specialist {arch_name}: {res.epochs_run} epochs in {res.seconds:.0f}s, "
          f"5-way val accuracy {res.best_val_accuracy:.4f}")
    np.savez(out, **probs)
    return probs


def _score_fits(test_probs, test_labels, costs, ref, cascade_fit, learned_fit):
    """Test accuracy and expected ms/image of a selected cascade and learned cascade."""
    from router.cascade import simulate_cascade
    from router.deferral import LearnedCascadeRouter
    out = {}
    conf = table_precision(test_probs.max(axis=2))
    chosen = {"cascade": simulate_cascade(conf, cascade_fit.stages, cascade_fit.thresholds),
              "learned-cascade": LearnedCascadeRouter.from_fit(learned_fit).simulate(test_probs)}
    stages = {"cascade": cascade_fit.stages, "learned-cascade": learned_fit.cascade.stages}
    for name, ch in chosen.items():
        right = test_probs[np.arange(len(ch)), ch].argmax(1) == test_labels
        st = stages[name]
        reach = [1.0] + [float(np.mean(~np.isin(ch, st[:j]))) for j in range(1, len(st))]
        out[name] = (right.mean(), sum(r * costs[m] for r, m in zip(reach, st)), st)
    return out


def probe_specialist(run: Path, arch_name: str, epochs: int, amp: str,
                     sacrifices=(0.0, 0.005, 0.01, 0.02)) -> None:
    from common.tables import PredictionTable
    from router.cascade import cascade_candidates, select_cascade
    from router.deferral import learned_candidates, select_learned
    spec = _train_specialist(run, arch_name, epochs, amp)
    t = load_tables(run)
    names, yv, Pv = t["val"]
    _, yt, Pt = t["test"]
    assert (spec["val_labels"] == yv).all() and (spec["test_labels"] == yt).all()
    cost = measured_ms(run, names)
    sname = f"specialist-{arch_name}"
    _, best_name = _cheap_and_best_names(run)
    for split, y, P in (("val", yv, Pv), ("test", yt, Pt)):
        sp = spec[split]
        right = sp.argmax(1) == y
        in_g = np.isin(y, SPECIALIST_GROUP)
        gen = P[:, names.index(arch_name)].argmax(1) == y
        best = P[:, names.index(best_name)].argmax(1) == y
        print(f"{split}: on the group's images {sname} {right[in_g].mean():.4f}, "
              f"{arch_name} {gen[in_g].mean():.4f}, {best_name} {best[in_g].mean():.4f}")
    Pv2 = np.concatenate([Pv, table_precision(spec["val"])[:, None]], axis=1)
    Pt2 = np.concatenate([Pt, table_precision(spec["test"])[:, None]], axis=1)
    names2 = names + [sname]
    cost2 = np.append(cost, cost[names.index(arch_name)])
    for zoo, idx in _zoo_indices(names).items():
        for with_spec in (False, True):
            cols = idx + ([len(names)] if with_spec else [])
            nm = [names2[i] for i in cols]
            tab = PredictionTable(nm, yv, Pv2[:, cols].argmax(2), Pv2[:, cols],
                                  np.arange(len(yv)), "val", {})
            c = cost2[cols]
            cands = cascade_candidates(tab, c)
            lc = learned_candidates(tab, c)
            ref = cands.reference
            for s in sacrifices:
                target = float(tab.correct[:, ref].mean()) - s
                cf = select_cascade(cands, target, z=1.0)
                lf = select_learned(lc, s, z=1.0)
                ref_test = (Pt2[:, cols[ref]].argmax(1) == yt).mean()
                for name, (acc, ms, st) in _score_fits(Pt2[:, cols], yt, c, ref, cf, lf).items():
                    held = "held" if acc >= ref_test - s - 1e-12 else "MISS"
                    print(f"{zoo:4s} {'+spec' if with_spec else '     '} s={s:<6g} {name:16s} "
                          f"{' -> '.join(nm[m] for m in st):62s} test {100 * acc:.2f}% {held} "
                          f"expected {c[ref] / ms:.2f}x best single")


def _oof_predictions(run: Path, folds: int, amp: str,
                     with_reference: bool) -> dict[str, np.ndarray]:
    """Out-of-fold train-split probabilities of copies of the base zoo's cheapest model (and,
    with ``with_reference``, of the reference) trained with their cards' recipes on the other
    folds, and every copy's val probabilities; cached in ``RUN/probes``."""
    from zoo.data.types import ImageSet
    from zoo.train import fit
    out = run / "probes" / f"oof-{folds}folds{'-ref' if with_reference else ''}.npz"
    if out.exists():
        return _load_npz(out)
    out.parent.mkdir(exist_ok=True)
    bundle = _load_bundle(run)
    cheap, best = _cheap_and_best_names(run)
    n = len(bundle.train.labels)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[np.random.default_rng(0).permutation(n)] = np.arange(n) % folds
    res: dict[str, np.ndarray] = {"fold_of": fold_of, "train_labels": bundle.train.labels.numpy(),
                                  "val_labels": bundle.val.labels.numpy()}
    cheap_only = run / "probes" / f"oof-{folds}folds.npz"
    if with_reference and cheap_only.exists():      # reuse the cheap model's copies
        res.update({k: v for k, v in _load_npz(cheap_only).items() if k.startswith(cheap)})
    for name in (cheap, best) if with_reference else (cheap,):
        if f"{name}_oof" in res:
            continue
        oof = np.zeros((n, bundle.info.num_classes))
        for k in range(folds):
            model, cfg = _fresh_copy(run, name, bundle.info.input_size, k, amp=amp)
            keep = torch.as_tensor(fold_of != k)
            train = ImageSet(bundle.train.images[keep], bundle.train.labels[keep],
                             bundle.train.ids[keep])
            fit(model, train, bundle.val, bundle.info, cfg, desc=f"{name} copy {k}",
                log_epochs=False)
            oof[fold_of == k] = _forward(model, bundle.info, bundle.train.images[~keep])
            res[f"{name}_val_copy{k}"] = _forward(model, bundle.info, bundle.val.images)
        res[f"{name}_oof"] = oof
    np.savez(out, **res)
    return res


def probe_oof_head(run: Path, folds: int, amp: str, with_reference: bool) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    d = _oof_predictions(run, folds, amp, with_reference)
    cheap, best = _cheap_and_best_names(run)
    yt, yv = d["train_labels"], d["val_labels"]
    p1 = d[f"{cheap}_oof"]
    c1 = p1.argmax(1) == yt
    print(f"out-of-fold on train ({len(yt)} images): {cheap} right on {c1.mean():.2%}")
    x = deferral_features(p1)
    sc = StandardScaler().fit(x)
    heads = {"logistic, cheap right": (LogisticRegression(C=1.0, max_iter=3000)
                                       .fit(sc.transform(x), c1), True),
             "boosted trees, cheap right": (HistGradientBoostingClassifier(random_state=0)
                                            .fit(sc.transform(x), c1), True)}
    if with_reference:
        c4 = d[f"{best}_oof"].argmax(1) == yt
        print(f"  {best} right on {c4.mean():.2%}; deferring gains on {(~c1 & c4).mean():.2%}")
        heads["logistic, deferring gains"] = (LogisticRegression(C=1.0, max_iter=3000)
                                             .fit(sc.transform(x), ~c1 & c4), False)
    t = load_tables(run)
    names, yv_table, Pv = t["val"]
    assert (yv_table == yv).all()
    c4v = Pv[:, names.index(best)].argmax(1) == yv
    cheap_val = {"deployed": Pv[:, names.index(cheap)]}
    cheap_val.update({f"copy {k}": d[f"{cheap}_val_copy{k}"] for k in range(folds)})
    for who, pv in cheap_val.items():
        pv = table_precision(pv)
        c1v = pv.argmax(1) == yv
        print(f"{cheap} ({who}, val accuracy {100 * c1v.mean():.2f}) -> {best} (deployed), val "
              f"accuracy with the given share deferred:")
        _curve("  max-softmax", pv.max(1), c1v, c4v)
        _curve("  ideal (uses the label)", c1v.astype(float) - c4v, c1v, c4v)
        xv = sc.transform(deferral_features(pv))
        for name, (head, right) in heads.items():
            pr = head.predict_proba(xv)[:, 1]
            _curve(f"  {name}", pr if right else -pr, c1v, c4v)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("probe", choices=["ensemble", "train-head", "finetune", "skip", "specialist",
                                          "oof-head"])
    ap.add_argument("--folds", type=int, default=3, help="oof-head: train-split folds")
    ap.add_argument("--with-reference", action="store_true",
                    help="oof-head: also train reference copies (a 'deferring gains' head)")
    ap.add_argument("--arch", default="tiny_vgg2", help="specialist: the zoo model it copies")
    ap.add_argument("--epochs", type=int, default=6, help="specialist: training epochs")
    ap.add_argument("--amp", choices=["off", "bf16"], default="bf16",
                    help="specialist, oof-head: training precision")
    ap.add_argument("--lam", type=float, default=1.0,
                    help="finetune: weight of the to-uniform term")
    ap.add_argument("--hard", choices=["wrong", "low-p"], default="wrong",
                    help="finetune: which train samples get the to-uniform term")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    {"ensemble": lambda: probe_ensemble(a.run), "train-head": lambda: probe_train_head(a.run),
     "finetune": lambda: probe_finetune(a.run, a.lam, a.hard),
     "skip": lambda: probe_skip(a.run),
     "specialist": lambda: probe_specialist(a.run, a.arch, a.epochs, a.amp),
     "oof-head": lambda: probe_oof_head(a.run, a.folds, a.amp, a.with_reference)}[a.probe]()


if __name__ == "__main__":
    main()
