"""`report --run DIR`: draw every figure and RUN/reports/index.html from saved results."""
from __future__ import annotations

import argparse

try:
    from reports.build import build_report
    from reports.style import DEFAULT_DPI
except ImportError as e:          # the figures are an extra
    if e.name not in ("seaborn", "matplotlib", "pandas"):
        raise
    raise SystemExit(f"report needs the [reports] extra ({e.name} is missing): "
                     "pip install 'adaptive-router[reports]'") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="report", description=__doc__)
    p.add_argument("--run", required=True, help="run directory written by the earlier steps")
    p.add_argument("--out", default=None, help="output folder (default RUN/reports)")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="PNG resolution")
    p.add_argument("--overlap-split", choices=("val", "test"), default="test",
                   help="split whose prediction table the overlap maps describe")
    args = p.parse_args(argv)
    result = build_report(args.run, args.out, dpi=args.dpi, overlap_split=args.overlap_split)
    for note in result.notes:
        print(f"note: {note}")
    print(result.index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
