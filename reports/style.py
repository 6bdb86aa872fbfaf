"""One seaborn theme for every figure, and ``save_figure`` (PNG plus the plotted data as CSV).

Figures are saved at a fixed ``figsize * dpi`` pixel size (no tight bounding box), so a test can
check the size of every PNG; layouts fit through matplotlib's constrained layout instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from oracle.io import atomic_write  # noqa: E402

DEFAULT_DPI = 110
OVERLAP_CMAP = "viridis"           # the one colour map of every overlap map (fixed 0-100 scale)
CONFUSION_CMAP = "Blues"
OVERLAP_VMIN, OVERLAP_VMAX = 0.0, 100.0
PALETTE = "tab10"
# reference lines stay out of the tab10 palette the methods use
REFERENCE_STYLE = {"best-single": dict(color="dimgray", linestyle="--", linewidth=1.4),
                   "ceiling": dict(color="black", linestyle=":", linewidth=1.5)}


def apply_theme() -> None:
    """Set the report's seaborn theme (idempotent)."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE,
                  rc={"figure.dpi": DEFAULT_DPI, "savefig.dpi": DEFAULT_DPI,
                      "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7,
                      "xtick.labelsize": 8, "ytick.labelsize": 8,
                      "font.family": "DejaVu Sans"})


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1,
               **kw: Any) -> tuple[plt.Figure, Any]:
    """A themed figure with constrained layout (so saving needs no tight bounding box)."""
    apply_theme()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained",
                             squeeze=False, **kw)
    return fig, axes


def as_frame(data: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The figure's data as a DataFrame (rows of dicts are accepted)."""
    return data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))


def save_figure(fig: plt.Figure, path: str | Path,
                data: pd.DataFrame | Iterable[Mapping[str, Any]],
                dpi: int = DEFAULT_DPI) -> tuple[Path, Path]:
    """Write ``path`` (.png) and the same name with ``.csv`` holding ``data``; close the figure.

    Both files are written atomically. Returns ``(png_path, csv_path)``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path {path} must end in .png (its data goes beside it as .csv)")
    frame = as_frame(data)
    if frame.empty:
        raise ValueError(f"no data for figure {path.name}: a figure must carry the data it plots")
    png = atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    csv = atomic_write(path.with_suffix(".csv"), lambda p: frame.to_csv(p, index=False))
    plt.close(fig)
    return png, csv
