"""``build_report``: every figure and table of a run, then ``index.html``.

A figure whose input file is absent is skipped with a note on the page (a run without
compression still reports); a present but malformed input raises an error naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from common.io import write_csv
from reports import style
from reports.compression import CompressionBarsDisplay, PruneSweepDisplay, WeightHistDisplay
from reports.frontier import FrontierDisplay
from reports.guarantee import plot_guarantee
from reports.heatmap import ConfusionDisplay, OverlapDisplay
from reports.html import FigureRef, Section, render_page, write_page
from reports.inputs import DEFAULT_ZOO, RunArtifacts, read_frame, load_run, zoo_rows, zoos_of
from reports.learned import (DEFERRAL_COLUMNS, LEARNED_FAMILY, DeferralCurvesDisplay,
                             LearnedVsCascadeDisplay, areas_display,
                             disagreements_from_run, router_areas)
from reports.sacrifice import SacrificeMetricsDisplay, SharesDisplay, TimeDisplay
from reports.tables import (LADDER_P, RERUN_HINT, SUMMARY_SACRIFICE, ZOO_DESCRIPTIONS, Summary,
                            committee_table, compression_table, headline_display, ladder_table,
                            routers_pivot,
                            routers_table, summarize, zoo_table)
from reports.training import TrainingCurvesDisplay


@dataclass
class ReportResult:
    index: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, out: Path, dpi: int):
        self.out, self.dpi = out, dpi
        self.figures: list[Path] = []
        self.notes: list[str] = []

    def figure(self, section: Section, name: str, caption: str, display: Any) -> None:
        png, csv = style.save_figure(display.figure_, self.out / f"{name}.png", display.data_,
                                     dpi=self.dpi)
        self.figures.append(png)
        section.figures.append(FigureRef(png.name, csv.name, caption))

    def skip(self, section: Section, what: str, reason: str) -> None:
        note = f"{what} skipped: {reason}"
        self.notes.append(note)
        section.notes.append(note)


def _pct(v: Any, digits: int = 2) -> str:
    return f"{100 * float(v):.{digits}f}%"


def _headline_line(r: pd.Series) -> str:
    """One (zoo, level) of the headline in words: the answer selected on val, as it came out."""
    zoo = f"zoo {r['zoo']} ({ZOO_DESCRIPTIONS.get(r['zoo'], 'a subset of the models')})"
    level = f"{100 * float(r['sacrifice']):g}% sacrifice"
    if not r["method"]:
        return f"Deployed at {level}, {zoo}: none selected ({RERUN_HINT})."
    parts = [f"test accuracy {_pct(r['accuracy'])}" if r["accuracy"] is not None
             else "test accuracy unknown"]
    if r["target_accuracy"] is not None:
        parts[-1] += f" (target {_pct(r['target_accuracy'])})"
    if r.get("selection") == "certified" and r.get("certified") is not None:
        ucb = r.get("certified_drop_ucb")
        pts = 100 * float(r["sacrifice"])
        parts.insert(0, (f"certified on val at risk {r['delta']:g}: with probability >= "
                         f"{1 - r['delta']:.0%} over the draw of the val images its expected "
                         f"drop against the reference is at most {pts:g} points"
                         + ("" if ucb is None else f" (bound {100 * ucb:.2f} points)"))
                     if r["certified"] else "not certified on val")
    held = r["budget_held"]
    status = r.get("budget_status")
    parts.append(f"on test: {status}" if isinstance(status, str) and status else
                 "budget held on test" if held is True else
                 "budget MISSED on test" if held is False else "budget on test not recorded")
    if r["speedup_vs_best"] is not None:
        ci = ("" if r.get("speedup_vs_best_lo") is None else
              f" (95% interval {r['speedup_vs_best_lo']:.2f}-{r['speedup_vs_best_hi']:.2f})")
        parts.append(f"{r['speedup_vs_best']:.2f}x{ci} the best single model"
                     + (f" ({r['best_single']})" if r["best_single"] else ""))
    if r["speedup_vs_cheapest_single"] is not None:
        parts.append(f"{r['speedup_vs_cheapest_single']:.2f}x the cheapest adequate single model"
                     + (f" ({r['cheapest_single']})" if r["cheapest_single"] else ""))
    if r["overhead_share"] is not None:
        parts.append(f"overhead {_pct(r['overhead_share'], 1)} of its time")
    return (f"Deployed at {level}, {zoo}: {r['method']} ({r['family']}), selected on val; "
            + ", ".join(parts) + ".")


def _summary_lines(s: Summary) -> list[str]:
    lines = []
    if s.best_single:
        acc = [f"{split} accuracy {100 * v:.2f}%" for split, v in
               (("val", s.best_single_val_accuracy), ("test", s.best_single_test_accuracy))
               if v is not None]
        ips = (f", {s.best_single_images_per_second:,.0f} images/s"
               if s.best_single_images_per_second else "")
        lines.append(f"Best single model (most accurate on val): {s.best_single} "
                     f"({', '.join(acc)}{ips}).")
    else:
        lines.append("Best single model: unknown (no val table and no routers.csv).")
    if s.selection_note:
        lines.append(f"Deployed router: not known ({s.selection_note}).")
    else:
        lines.append("The deployed answer at each level is the one selected on validation "
                     "(certified selection: the cheapest answer whose budget a held-out part of "
                     "val certifies at the stated risk; estimate rule: the least expected cost "
                     "among the answers whose val accuracy met the target); its test row is "
                     "reported as it came out, held or not. No figure here is a maximum over "
                     "test rows.")
        at = s.headline[np.isclose(s.headline["sacrifice"].astype(float), SUMMARY_SACRIFICE)]
        if at.empty:
            lines.append(f"No level at {100 * SUMMARY_SACRIFICE:g}% sacrifice was evaluated; "
                         "every level is in the table below.")
        lines += [_headline_line(r) for _, r in at.iterrows()]
    if s.oracle_bounds:
        bounds = [f"{o['method']} {100 * float(o['accuracy']):.2f}%"
                  + (f" at {o['speedup_vs_best']:.2f}x" if o.get("speedup_vs_best") else "")
                  + ("" if o.get("budget_held") is not False else " (missed)")
                  for o in s.oracle_bounds]
        lines.append(f"Bounds at {100 * SUMMARY_SACRIFICE:g}% (zoo all): the executed label "
                     f"oracles (route by the true label, not deployable): {'; '.join(bounds)}.")
    if s.machine:
        keys = ("cpu", "threads", "torch", "device")
        desc = ", ".join(f"{k} {s.machine[k]}" for k in keys if s.machine.get(k) is not None)
        threads = (f"; routers timed with {s.router_threads} threads"
                   if s.router_threads is not None else "")
        lines.append(f"Timed on: {desc or s.machine}{threads}.")
    lines.append("Oracle rows route by the true label: they are bounds, not deployable routers.")
    return lines


HEADLINE_CAPTION = ("The deployed answer at every level and zoo, selected on val; test figures as "
                    "they came out (x best / x cheapest single: measured images/s over the best "
                    "single model / over the cheapest single model meeting the same target on "
                    "val; overhead: router plus wasted early-stage time over the routed time). "
                    "Also headline.csv.")


def _overlap_section(b: _Builder, art: RunArtifacts, split: str) -> Section:
    sec = Section("Prediction overlap")
    table = getattr(art, split)
    if table is None:
        b.skip(sec, "Overlap maps", f"tables/{split}.npz is absent (run `profile-zoo`)")
        return sec
    sec.paragraphs.append(
        "Cell (row i, column j) = % of the samples model j gets right that model i also gets "
        "right: 100 * |both right| / |j right|. Models are ordered weakest to strongest, so the "
        "upper-right triangle reads as '% of the stronger model's correct answers the weaker one "
        "keeps' (the original study's '% weaker of stronger'). The total map pools all samples "
        "(it is not any one label's map, nor their mean); every map shares one 0-100 scale.")
    disp = OverlapDisplay.from_table(table, art.class_names)
    b.figure(sec, "overlap_total", f"Pooled overlap over all {split} samples", disp.plot_total())
    disp = OverlapDisplay.from_table(table, art.class_names)
    b.figure(sec, "overlap_per_label", "Overlap within each label", disp.plot_per_label())
    return sec


def _router_sections(b: _Builder, art: RunArtifacts) -> list[Section]:
    sec = Section("Routers against sacrifice")
    if art.routers is None:
        b.skip(sec, "Router figures", "results/routers.csv is absent (run `evaluate-routers`)")
        return [sec]
    r = zoo_rows(art.routers, DEFAULT_ZOO)   # figures: the whole zoo only, nothing drawn twice
    sec.paragraphs.append(
        "Sacrifice s: each policy may lose at most s (in accuracy points) against the best single "
        "model. Everything is fitted on the validation split and scored on test; a row's "
        "budget_held says whether the test accuracy kept the promise, and budget_margin_se by how "
        "much, in standard errors of the paired difference to the best single model on the test "
        "images (a miss of less than one SE is what test noise alone makes likely). The answer "
        "deployed at a "
        "level is selected on val (ringed in the figures, [selected] in the tables). Label "
        "oracles route by the true label: they are bounds, not deployable routers. The figures "
        "show the routers fitted over the whole zoo; the tables also those over the "
        "uncompressed models only (zoo base).")
    if r[["accuracy", "images_per_second"]].dropna().empty:
        b.skip(sec, "Frontier", "no row of routers.csv has both accuracy and images/s")
    else:
        b.figure(sec, "frontier", "Accuracy against measured throughput: single models as "
                 "points, routers as curves over their sacrifice levels (level printed at each "
                 "end), the per-sample ceiling as a star", FrontierDisplay.from_routers(r).plot())
    b.figure(sec, "metrics_vs_sacrifice", "Accuracy, precision, recall, F1 (macro) on test "
             "against sacrifice", SacrificeMetricsDisplay.from_routers(r).plot())
    if r["images_per_second"].notna().any() and "seconds" in r.columns:
        b.figure(sec, "time_vs_sacrifice", "Measured seconds and images/s against sacrifice",
                 TimeDisplay.from_routers(r).plot())
    else:
        b.skip(sec, "Time against sacrifice", "no row of routers.csv was timed")
    if any(c.startswith("share_") for c in r.columns):
        b.figure(sec, "model_shares", "Share of test images per model",
                 SharesDisplay.from_routers(r).plot())
    else:
        b.skip(sec, "Model shares", "routers.csv has no share_<model> columns")
    for zoo in zoos_of(art.routers):
        pivot = routers_pivot(art.routers, zoo)
        if not pivot.empty:
            sec.tables.append((f"Timed routers at each level, zoo {zoo} "
                               f"({ZOO_DESCRIPTIONS.get(zoo, 'a subset of the models')}): test "
                               "accuracy / measured speedup over the best single model ('missed':"
                               " below the level's target; [selected]: the answer selected on "
                               "val)", pivot))
    committees = committee_table(art.routers)
    if not committees.empty:
        sec.tables.append(("Best single model against the committee cascade fitted on val at "
                           "each level (test accuracy, gain, measured speedup with its 95% "
                           "interval; certified: its budget certified on val)", committees))
    sec.details.append(("All rows of results/routers.csv (single models once per zoo)",
                        routers_table(art.routers)))
    return [sec]


AREA_TEXT = (
    "Area above random: for each deployable router (cascade, learned routers, dispatchers) and "
    "zoo, its points over the sacrifice sweep (measured images/s, test accuracy), each with the "
    "accuracy of the cost-matched random router (same expected cost per image, models assigned "
    "at random). The area is the trapezoid integral of (accuracy - random accuracy), in "
    "accuracy points, over log2(images/s) along the router's own curve sorted by images/s: "
    "points x doublings of throughput. It is positive where routing by the image beats routing "
    "by chance over the throughput range the router covers; a router whose levels all land at "
    "one speed covers no range and gets little area however good it is, so read it with the "
    "levels and gap_recovered beside it (at each level: (accuracy - random) / (per-sample "
    "ceiling - random); 1 = the ceiling, 0 = chance). Blank: fewer than two levels with a "
    "random twin. Also router_areas.csv.")


def _stale(out: Path, *names: str) -> None:
    """Remove an older report's file this run does not produce."""
    for name in names:
        if (out / name).exists():
            (out / name).unlink()


def _learned_section(b: _Builder, art: RunArtifacts) -> Section:
    sec = Section("Learned routers, the cascade and the random router")
    if art.routers is None:
        b.skip(sec, "Areas above random", "results/routers.csv is absent (run `evaluate-routers`)")
        _stale(b.out, "router_areas.csv", "learned_vs_cascade.png", "learned_vs_cascade.csv",
               "routing_disagreements.csv")
        return sec
    areas = router_areas(art.routers)
    if areas.empty:
        b.skip(sec, "Areas above random", "routers.csv has no deployable router rows")
        _stale(b.out, "router_areas.csv")
    else:
        write_csv(b.out / "router_areas.csv", areas.to_dict("records"), list(areas.columns))
        sec.paragraphs.append(AREA_TEXT)
        sec.tables.append(("Area above the cost-matched random router, per router and zoo",
                           areas_display(areas)))
    r = zoo_rows(art.routers, DEFAULT_ZOO)
    disp, why_not = None, ("routers.csv has no learned router (family `learned`, methods "
                           "`learned-*`) in zoo all; re-run `evaluate-routers` with a version "
                           "that fits one")
    if (r["family"] == LEARNED_FAMILY).any():
        try:
            disp = LearnedVsCascadeDisplay.from_routers(r)
        except ValueError as e:         # learned rows, but no router point timed
            why_not = str(e)
    if disp is None:
        b.skip(sec, "Learned routers against the cascade (figure)", why_not)
        _stale(b.out, "learned_vs_cascade.png", "learned_vs_cascade.csv")
    else:
        b.figure(sec, "learned_vs_cascade", "Zoo all: the cascade and every learned router "
                 "(the dispatchers lighter) as accuracy against measured images/s (log scale) "
                 "over their sacrifice levels; a hollow marker of the same colour at each point's "
                 "x is that level's cost-matched random router, a thin line the gap between "
                 "them; the black star is the best single model, grey squares the cheapest "
                 "adequate single models (on val)", disp.plot())
    curves_csv = art.root / "results" / "deferral_curves.csv"
    curves = (read_frame(curves_csv, DEFERRAL_COLUMNS, "evaluate-routers")
              if curves_csv.exists() else None)
    if curves is None or curves.empty:
        b.skip(sec, "Deferral curves", "results/deferral_curves.csv is absent (re-run "
               "`evaluate-routers`)")
        _stale(b.out, "deferral_curves.png", "deferral_curves.csv")
    else:
        b.figure(sec, "deferral_curves", "Why the learned cascade does or does not beat the "
                 "cascade: test accuracy when the cheapest model answers and the share on the x "
                 "axis goes to the reference, the deferred inputs ranked by max-softmax, by the "
                 "learned deferral head (fitted on val) and ideally (its mistakes first, a bound "
                 "that uses the label)", DeferralCurvesDisplay(curves).plot())
    dis, why = disagreements_from_run(art, DEFAULT_ZOO)
    if dis is None:
        b.skip(sec, "Routing disagreements by true label", why)
        _stale(b.out, "routing_disagreements.csv")
    else:
        frame = dis.csv_frame()
        write_csv(b.out / "routing_disagreements.csv", frame.to_dict("records"),
                  list(frame.columns))
        sec.tables.append((
            f"Routing disagreements by true label, zoo {dis.zoo} at "
            f"{100 * dis.sacrifice:g}% sacrifice: {dis.learned} ({dis.how}) against the "
            f"cascade. Routed differently: test images the two sent to different models; of "
            f"those, the ones only {dis.learned} got right and the ones only the cascade got "
            "right. Also routing_disagreements.csv.", dis.display()))
    return sec


def _confusion_section(b: _Builder, art: RunArtifacts, summary: Summary) -> Section:
    sec = Section("Confusion matrices (test)")
    if art.test is None:
        b.skip(sec, "Confusion matrices", "tables/test.npz is absent (run `profile-zoo`)")
        return sec
    names = art.class_names
    if summary.best_single in art.test.model_names:
        i = art.test.model_index(summary.best_single)
        disp = ConfusionDisplay.from_predictions(art.test.labels, art.test.preds[:, i], names,
                                                 f"Best single model: {summary.best_single}")
        b.figure(sec, "confusion_best_single", f"Best single model ({summary.best_single})",
                 disp.plot())
    row = summary.router          # the answer selected on val at the summary level (zoo all)
    missed = row is not None and row.get("budget_held") is False
    if art.router_predictions is None:
        b.skip(sec, "Router confusion matrix", "results/router_predictions.npz is absent")
    elif row is None:
        b.skip(sec, "Router confusion matrix", summary.router_note)
    else:
        preds = art.router_predictions.find(str(row["method"]), float(row["sacrifice"]),
                                            str(row.get("zoo") or DEFAULT_ZOO))
        if preds is None:
            b.skip(sec, "Router confusion matrix", f"router_predictions.npz has no entry for "
                   f"{row['method']} at sacrifice {row['sacrifice']}")
        elif preds.shape != art.test.labels.shape:
            raise ValueError(f"router_predictions.npz holds {preds.shape[0]} predictions but the "
                             f"test table has {art.test.n_samples}; re-run `evaluate-routers`")
        else:
            title = (f"Selected on val: {row['method']} at {100 * float(row['sacrifice']):g}%"
                     + (" (missed its budget on test)" if missed else ""))
            disp = ConfusionDisplay.from_predictions(art.test.labels, preds, names, title)
            b.figure(sec, "confusion_selected_router", title, disp.plot())
    return sec


def _zoo_section(b: _Builder, art: RunArtifacts) -> Section:
    sec = Section("The zoo")
    frame = zoo_table(art)
    if frame.empty:
        b.skip(sec, "Zoo table", "no tables, costs.json or model cards found")
    else:
        write_csv(b.out / "zoo_table.csv", frame.to_dict("records"), list(frame.columns))
        sec.tables.append(("Models (accuracy from the tables, costs measured by profile-zoo)",
                           frame))
    if art.committees is not None and not art.committees.empty:
        sec.tables.append(("Committees: k models as one stacked module against the same models "
                           "run one after the other (ms per image, same batch and threads; "
                           "speedup = members' time / the module's; results/committees.csv, "
                           "python -m scripts.bench_committee)", art.committees))
    ladder = ladder_table(art)
    if ladder.empty:
        b.skip(sec, "Ladder", "needs costs.json, the tables and two base models' cards")
    else:
        write_csv(b.out / "ladder.csv", ladder.to_dict("records"), list(ladder.columns))
        sec.tables.append(("The ladder: each base model (cheapest first by MACs) against the most "
                           "accurate cheaper one; p = exact McNemar test on this split, "
                           f"beyond_noise = p < {LADDER_P}", ladder))
    if art.histories:
        b.figure(sec, "training_curves", "Training curves per model",
                 TrainingCurvesDisplay.from_histories(art.histories).plot())
    else:
        b.skip(sec, "Training curves", "no RUN/zoo/*/history.csv")
    return sec


def _compression_section(b: _Builder, art: RunArtifacts) -> Section:
    sec = Section("Compression")
    baselines = {"base"}
    if art.compression is not None:
        baselines |= set(art.compression["base"].astype(str))
    builds: list[tuple[str, str, Any, Callable[[pd.DataFrame], Any]]] = [
        ("compression.csv", "compression_bars", art.compression,
         lambda f: CompressionBarsDisplay.from_frame(f).plot()),
        ("prune_sweep.csv", "prune_sweep", art.prune_sweep,
         lambda f: PruneSweepDisplay.from_frame(f).plot()),
        ("weight_hist.csv", "weight_hist", art.weight_hist,
         lambda f: WeightHistDisplay.from_frame(f, baselines).plot())]
    captions = {"compression_bars": "Size, params, MACs, latency, accuracy vs baseline",
                "prune_sweep": "Accuracy and throughput vs pruning level",
                "weight_hist": "Weight-value histograms"}
    for file, name, frame, make in builds:
        if frame is not None:
            b.figure(sec, name, captions[name], make(frame))
        elif name == "prune_sweep" and art.compression is not None:
            try:
                disp = PruneSweepDisplay.from_compression(art.compression)
            except ValueError as e:
                b.skip(sec, captions[name], str(e))
            else:
                b.figure(sec, name, captions[name] + " (fine-tuned variants of compression.csv;"
                         " `compress --sweep` adds the one-shot sweep)", disp.plot())
        else:
            b.skip(sec, captions[name], f"results/{file} is absent (run `compress`)")
    if art.compression is not None:
        sec.tables.append(("Compressed variants (results/compression.csv)",
                           compression_table(art.compression)))
    return sec


def _guarantee_section(b: _Builder, run: Path) -> Section:
    """Promised against delivered, from results/guarantee.csv (``scripts.bench_guarantee``)."""
    sec = Section("Does the budget hold? The miss-rate benchmark")
    path = run / "results" / "guarantee.csv"
    if not path.exists():              # an optional benchmark: a hint, not a skipped figure
        sec.paragraphs.append("Not measured for this run: `python -m scripts.bench_guarantee "
                              "--run RUN` adds the figure (minutes on a CPU).")
        return sec
    frame = pd.read_csv(path)
    sec.paragraphs.append(
        "Each draw resamples a val split of the same size from the pooled val and test tables, "
        "runs the selection, and measures the deployed answer's accuracy drop against the "
        "draw's reference on the whole pool. A miss: that drop exceeds the level. The certified "
        "rule promises a miss rate of at most delta; the estimate rule promises nothing.")
    png, csv = plot_guarantee(frame.to_dict("records"), b.out / "guarantee.png")
    b.figures.append(png)
    sec.figures.append(FigureRef(png.name, csv.name, "Miss rate (95% interval) and median "
                                 "expected speedup over the reference, per rule and level"))
    sec.tables.append(("results/guarantee.csv", frame))
    return sec


def build_report(run: str | Path, out: str | Path | None = None, *, dpi: int = style.DEFAULT_DPI,
                 overlap_split: str = "test") -> ReportResult:
    """Draw every figure of run ``run`` into ``out`` (default RUN/reports) and write index.html."""
    if overlap_split not in ("val", "test"):
        raise ValueError(f"overlap_split must be 'val' or 'test', not {overlap_split!r}")
    art = load_run(run)
    style.use_router_kinds(art.router_kinds)     # the kinds' colours, markers and families
    out = Path(out) if out is not None else Path(run) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    b = _Builder(out, dpi)
    summary = summarize(art)
    summary_tables = []
    if not summary.headline.empty:
        write_csv(out / "headline.csv", summary.headline.to_dict("records"),
                  list(summary.headline.columns))
        summary_tables.append((HEADLINE_CAPTION, headline_display(summary.headline)))
    elif (out / "headline.csv").exists():
        (out / "headline.csv").unlink()     # an older report's, not this run's
    if summary.selection_note and art.routers is not None:
        b.notes.append(f"Headline table skipped: {summary.selection_note}")
    sections = [*_router_sections(b, art), _learned_section(b, art),
                _overlap_section(b, art, overlap_split),
                _zoo_section(b, art), _confusion_section(b, art, summary),
                _compression_section(b, art), _guarantee_section(b, Path(run))]
    index = write_page(out / "index.html",
                       render_page(f"Adaptive-inference router report: {Path(run).name}",
                                   _summary_lines(summary), sections, summary_tables))
    return ReportResult(index, b.figures, b.notes)


__all__ = ["build_report", "ReportResult"]
