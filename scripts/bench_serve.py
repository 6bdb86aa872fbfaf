"""`python -m scripts.bench_serve --run DIR [--url URL] [--backend embedded|ray] [--rates ...]
[--level S] [--slo-ms 100] [--max-requests N] [--max-seconds T]`: serving under load.

Replays the run's test images against the service over loopback, open loop (Poisson arrivals at
each offered rate), for the best single model, the cheapest adequate single model and the answer
selected on val at the level; writes RUN/results/serving.csv and RUN/reports/serving.png (+ .csv)
and prints the highest rate each method sustains with p99 under the objective. Without --url it
starts `serve` on a free loopback port and stops it at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router.web.batching import BatchConfig
from router.web.loadbench import (LoadConfig, ServerProcess, bench_serving, format_sustained,
                                  free_loopback_port, write_serving)
from router.web.methods import ALIASES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_serve", description=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="run directory (routers.csv, test split)")
    p.add_argument("--url", default=None,
                   help="a running service (loopback only); default: start one here")
    p.add_argument("--backend", choices=("embedded", "ray"), default="embedded",
                   help="the backend to start (or the label of --url's rows)")
    p.add_argument("--rates", type=float, nargs="+", default=[10, 25, 50, 100, 200],
                   help="offered request rates (requests/s)")
    p.add_argument("--methods", nargs="+", default=list(ALIASES), choices=list(ALIASES))
    p.add_argument("--level", type=float, default=0.005, help="sacrifice level of the methods")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 latency objective (ms)")
    p.add_argument("--max-requests", type=int, default=500, help="per method and rate")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="arrivals stop after this many seconds (per method and rate)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="a request unanswered after this many seconds is lost")
    p.add_argument("--concurrency", type=int, default=256, help="client threads")
    p.add_argument("--input", choices=("upload", "sample"), default="upload",
                   help="send test images as PNG uploads, or as sample=I of the service's split")
    p.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("the service started here (without --url)")
    s.add_argument("--max-batch", type=int, default=BatchConfig.max_batch)
    s.add_argument("--max-wait-ms", type=float, default=BatchConfig.max_wait_ms)
    s.add_argument("--max-queue", type=int, default=BatchConfig.max_queue)
    s.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    s.add_argument("--start-timeout", type=float, default=600.0,
                   help="seconds the service may take to load")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = Path(args.run)
    cfg = LoadConfig(rates=args.rates, methods=args.methods, level=args.level,
                     slo_ms=args.slo_ms, max_requests=args.max_requests,
                     max_seconds=args.max_seconds, timeout_s=args.timeout,
                     concurrency=args.concurrency, input=args.input, seed=args.seed)
    server = None
    url = args.url
    if url is None:
        port = free_loopback_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "scripts.serve", "--run", str(run), "--host", "127.0.0.1",
               "--port", str(port), "--backend", args.backend, "--level", f"{args.level:g}",
               "--max-batch", str(args.max_batch), "--max-wait-ms", f"{args.max_wait_ms:g}",
               "--max-queue", str(args.max_queue), "--threads", str(args.threads),
               "--request-timeout", f"{args.timeout:g}"]
        if args.backend == "ray":
            cmd += ["--ray-methods", ",".join(args.methods)]
        server = ServerProcess(cmd, run / "results" / f"serve-{args.backend}.log", url,
                               args.start_timeout)
        print(f"bench_serve: starting `serve --backend {args.backend}` on {url} ...", flush=True)
        try:
            server.start()
        except (RuntimeError, TimeoutError) as e:
            raise SystemExit(f"bench_serve: {e}") from None
    try:
        print(f"bench_serve: {args.backend} at {url}; rates {args.rates} req/s; "
              f"<= {args.max_requests} requests or {args.max_seconds:g} s each", flush=True)
        rows = bench_serving(run, url, cfg, args.backend,
                             log=lambda s: print(s, flush=True))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise SystemExit(f"bench_serve: {e}") from None
    finally:
        if server is not None:
            server.stop()
    csv = write_serving(run, rows)
    from common.io import read_csv
    from reports.serving import plot_serving
    png, _ = plot_serving(read_csv(csv), run / "reports" / "serving.png", args.slo_ms)
    print(f"bench_serve: wrote {csv} and {png}")
    print(format_sustained(rows, args.slo_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
