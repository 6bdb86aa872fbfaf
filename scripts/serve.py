"""`serve --run DIR [--host 127.0.0.1] [--port 8000] [--backend embedded|ray] [--max-batch 32]
[--max-wait-ms 5] [--max-queue 128]`: the page and the JSON API, dynamically batched."""
from __future__ import annotations

import argparse

from router.web import BatchConfig, Limits, ServingEngine, TimingConfig, WebService, create_app
from router.web.methods import DEFAULT_LEVEL
from router.web.server import SERVERS, http_threads_for, serve_app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve", description=(
        "Serve a page where an uploaded image (or a test sample) goes through every model of "
        "the run, with the routers' choices beside them, and a JSON API that answers with one "
        "method (a model or a router). Requests are queued and run in dynamic batches; a full "
        "queue answers 503 with Retry-After. Models load once at start."))
    p.add_argument("--run", required=True, help="run directory holding zoo/<model>/")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: a free one, printed)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest decoded image accepted (decompression-bomb guard)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per model per page batch; the card shows their median")
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=BatchConfig.max_batch,
                   help="most requests in one batch")
    g.add_argument("--max-wait-ms", type=float, default=BatchConfig.max_wait_ms,
                   help="longest the oldest queued request waits for others to join its batch")
    g.add_argument("--max-queue", type=int, default=BatchConfig.max_queue,
                   help="requests allowed to wait; more are answered 503 with Retry-After")
    g.add_argument("--workers", type=int, default=1, help="batches run at once (threads)")
    g.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds before an unanswered request gets 504")
    g.add_argument("--method", default="selected",
                   help="what the page's 'served answer' uses and /api/predict?method= may name: "
                        "selected | best-single | cheapest-single (at --level) | single:<model> "
                        "| router:<artifact stem>")
    g.add_argument("--level", type=float, default=DEFAULT_LEVEL,
                   help="sacrifice level of the method aliases (default 0.005)")
    s = p.add_argument_group("server")
    s.add_argument("--backend", choices=("embedded", "ray"), default="embedded",
                   help="embedded: this process (waitress); ray: a Ray Serve application, one "
                        "deployment per zoo model (pip install adaptive-router[ray])")
    s.add_argument("--server", choices=SERVERS, default="waitress",
                   help="embedded backend's HTTP server: waitress (production) or flask "
                        "(the development server, for debugging)")
    s.add_argument("--http-threads", type=int, default=0,
                   help="waitress request threads (0: max-queue + max-batch x workers + 8)")
    s.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (e.g. auto after `ray start --head`); default: a "
                        "local one")
    s.add_argument("--replicas", type=int, default=1, help="Ray: replicas per model deployment")
    s.add_argument("--ray-methods", default=None,
                   help="Ray: comma-separated methods to deploy (e.g. selected,best-single); "
                        "only the models they need get a deployment (default: every model)")
    s.add_argument("--ray-num-cpus", type=float, default=0.1,
                   help="Ray: CPUs each replica reserves (raise it on a real cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.repeats < 1:
        raise SystemExit("--max-upload-mb and --max-megapixels must be > 0, --repeats >= 1")
    batching = BatchConfig(args.max_batch, args.max_wait_ms, args.max_queue, args.workers,
                           args.request_timeout)
    try:
        batching.check()
    except ValueError as e:
        raise SystemExit(f"serve: {e}") from None
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20),
                    max_pixels=int(args.max_megapixels * 1e6))
    if args.backend == "ray":
        from router.web.ray_backend import serve_ray
        return serve_ray(args.run, host=args.host, port=args.port, batching=batching,
                         limits=limits, level=args.level, default_method=args.method,
                         address=args.ray_address, replicas=args.replicas,
                         threads=args.threads, num_cpus=args.ray_num_cpus,
                         methods=args.ray_methods.split(",") if args.ray_methods else None)
    try:
        service = WebService.load(args.run, TimingConfig(args.repeats, args.threads))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"serve: {e}") from None
    engine = ServingEngine(service, batching, method=args.method, level=args.level)
    print(f"serve: {len(service.models)} models from {args.run}; {service.sample_note}; "
          f"serving {engine.default.key} by default"
          + (f" ({engine.default_note})" if engine.default_note else "")
          + f"; batches of <= {args.max_batch}, wait <= {args.max_wait_ms:g} ms, "
          f"queue <= {args.max_queue}", flush=True)
    threads = args.http_threads or http_threads_for(args.max_queue, args.max_batch, args.workers)
    serve_app(create_app(service, limits, engine), args.host, args.port, server=args.server,
              http_threads=threads,
              on_ready=lambda url: print(f"serve: listening on {url} ({args.server})", flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
