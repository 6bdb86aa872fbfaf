"""`serve --run DIR [--host 127.0.0.1] [--port 8000] [--max-upload-mb 10]`: the web page."""
from __future__ import annotations

import argparse

try:
    from router.web import Limits, TimingConfig, WebService, create_app
except ImportError as e:          # the page is an extra
    if e.name not in ("flask", "werkzeug", "waitress"):
        raise
    raise SystemExit(f"serve needs the [web] extra ({e.name} is missing): "
                     "pip install 'adaptive-router[web]'") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve", description=(
        "Serve a page where an uploaded image (or a test sample) goes through every model of "
        "the run, with the routers' choices beside them. Models load once at start."))
    p.add_argument("--run", required=True, help="run directory holding zoo/<model>/")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest decoded image accepted (decompression-bomb guard)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per model per request; the card shows their median")
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.repeats < 1:
        raise SystemExit("--max-upload-mb and --max-megapixels must be > 0, --repeats >= 1")
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20),
                    max_pixels=int(args.max_megapixels * 1e6))
    try:
        service = WebService.load(args.run, TimingConfig(args.repeats, args.threads))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"serve: {e}") from None
    print(f"serve: {len(service.models)} models from {args.run}; {service.sample_note}; "
          f"open http://{args.host}:{args.port}/")
    create_app(service, limits).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
