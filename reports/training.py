"""Training curves from the zoo's ``history.csv`` files: loss and accuracy per epoch."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from reports import style


@dataclass
class TrainingCurvesDisplay:
    """Loss and accuracy per epoch for every model (solid = train, dashed = val)."""

    history: pd.DataFrame  # tidy: model, epoch, split, loss, accuracy

    @classmethod
    def from_histories(cls, histories: dict[str, pd.DataFrame]) -> "TrainingCurvesDisplay":
        if not histories:
            raise ValueError("no history.csv under RUN/zoo/*/; train models with `train-zoo`")
        parts = []
        for model, h in histories.items():
            for split in ("train", "val"):
                parts.append(pd.DataFrame({"model": model, "epoch": h["epoch"], "split": split,
                                           "loss": h[f"{split}_loss"],
                                           "accuracy": h[f"{split}_accuracy"]}))
        return cls(pd.concat(parts, ignore_index=True))

    @property
    def data_(self) -> pd.DataFrame:
        return self.history

    def plot(self) -> "TrainingCurvesDisplay":
        fig, axes = style.new_figure(11.0, 3.8, 1, 2)
        shown = self.history.assign(accuracy=100 * self.history["accuracy"])
        for ax, col, label in ((axes[0, 0], "loss", "loss (cross-entropy)"),
                               (axes[0, 1], "accuracy", "accuracy (%)")):
            sns.lineplot(shown, x="epoch", y=col, hue="model", style="split",
                         style_order=["train", "val"], markers=True, ax=ax,
                         legend=col == "accuracy")
            ax.set_title(f"{col} per epoch (solid: train, dashed: val)")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        style.shared_legend(fig, [axes[0, 1]])
        self.axes_, self.figure_ = axes, fig
        return self
