"""The plain ensemble behind a README figure: every model's probabilities averaged, per zoo.

    python experiments/average_probs.py --run runs/standard

Prints, for the whole zoo and for the uncompressed models (the zoos recorded in
``RUN/routers/fits.json``; the whole zoo only where evaluate-routers has not run), the val and
test accuracy of the argmax of the mean of the models' probabilities, beside the most
accurate single model on val. A probe, not a router: nothing is selected, every model runs on
every image, and its cost is the sum of all the models'. Reads the prediction tables only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common.tables import PredictionTable


def mean_probability_accuracy(table: PredictionTable) -> float:
    """Accuracy of argmax over classes of the models' mean probabilities."""
    mean = table.probs.astype(np.float32).mean(axis=1)            # (N, C)
    return float((mean.argmax(axis=1) == table.labels).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    a = p.parse_args(argv)
    tables = Path(a.run) / "tables"
    val, test = PredictionTable.load(tables, "val"), PredictionTable.load(tables, "test")
    fits = Path(a.run) / "routers" / "fits.json"
    zoos = ({z: f["models"] for z, f in json.loads(fits.read_text())["zoos"].items()}
            if fits.exists() else {"all": val.model_names})
    for zoo, names in zoos.items():
        v, t = val.select_models(names), test.select_models(names)
        ref = int(np.argmax(v.accuracy()))
        print(f"zoo {zoo} ({len(names)} models): mean of probabilities val "
              f"{100 * mean_probability_accuracy(v):.2f}%, test "
              f"{100 * mean_probability_accuracy(t):.2f}%; most accurate on val "
              f"{names[ref]}: val {100 * v.accuracy()[ref]:.2f}%, test "
              f"{100 * t.accuracy()[ref]:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
