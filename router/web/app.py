"""The Flask app: one page (upload or pick a test sample, see every model and the routers) and a
JSON API that returns the same data, or one method's answer; every request goes through the
engine's batcher (``router.web.serving``).

Routes: ``GET /`` (page; ``?sample=I`` analyses test sample I), ``POST /`` (page, upload field
``image``), ``POST /api/predict`` (upload) or ``GET /api/predict?sample=I`` (JSON),
``GET /api/models``, ``GET /api/methods``, ``GET /api/stats``, ``GET /samples/I.png``,
``GET /healthz``. Any route takes ``policy=KEY`` to pick the oracle policy shown in the router
strip. ``/api/predict`` with ``method=M`` (``selected``, ``best-single``, ``cheapest-single``
with ``level=S``; ``single:<model>``; ``router:<stem>``) answers with that method alone: the
class, the model that gave it, queue and compute ms. A full queue answers 503 with
``Retry-After``; a request not answered in time, 504.
"""
from __future__ import annotations

import base64
import random
from dataclasses import asdict
from typing import Any

import torch
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from router.web.batching import BatchConfig, Overloaded, RequestTimeout, Served
from router.web.images import (InputError, Limits, check_upload, resize_input, tensor_to_png,
                               to_input)
from router.web.service import WebService
from router.web.serving import ClassifyJob, InspectJob, ServingEngine

MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file itself


def create_app(service: WebService, limits: Limits | None = None,
               engine: ServingEngine | None = None, batching: BatchConfig | None = None) -> Flask:
    """Build the app around an already loaded ``WebService`` (models load once, not per
    request) and its ``ServingEngine`` (made here from ``batching`` when not given)."""
    # Long by design: Flask's routes are closures over ``service``, ``engine`` and ``limits``,
    # one short function each, registered here in one place.
    limits = limits or Limits()
    engine = engine or ServingEngine(service, batching)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_bytes + MULTIPART_SLACK
    app.config["MAX_FORM_MEMORY_SIZE"] = limits.max_bytes + MULTIPART_SLACK
    app.extensions["router_web"] = service
    app.extensions["router_engine"] = engine

    def analyse() -> tuple[dict[str, Any], int]:
        """The payload for the page and the API; raises ``InputError`` on bad input,
        ``Overloaded`` or ``RequestTimeout`` from the batcher."""
        values = request.values
        policy = values.get("policy") or None
        method = values.get("method") or None
        if request.path.startswith("/api/"):   # a bad method or level is a 400, named
            m = engine.resolve_request(method, values.get("level"))
            if method is not None:
                image, source, label = read_input(service, limits, m.info)
                return classify_payload(engine.classify(m, image), method, source, label), 200
        if "sample" in values and not request.files.get("image"):
            return analyse_sample(engine, values.get("sample", ""), policy), 200
        if request.method == "POST":
            f = _upload_file()
            data = f.read(limits.max_bytes + 1)
            return analyse_upload(engine, data, f.filename, limits, policy), 200
        raise InputError("nothing to analyse: upload a file in field 'image' (POST) or pass "
                         "sample=I", 400)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True, "models": len(service.models),
                        "queued": engine.batcher.stats()["queued"]})

    @app.get("/api/models")
    def api_models() -> Response:
        return jsonify(service.describe())

    @app.get("/api/methods")
    def api_methods() -> Response:
        return jsonify(engine.describe())

    @app.get("/api/stats")
    def api_stats() -> Response:
        return jsonify(engine.batcher.stats())

    @app.route("/api/predict", methods=["GET", "POST"])
    def api_predict() -> tuple[Response, int] | Response:
        try:
            payload, status = analyse()
        except InputError as e:
            return jsonify({"error": str(e), "status": e.status, **e.fields}), e.status
        except Overloaded as e:
            r = jsonify({"error": str(e), "status": 503, "retry_after_s": e.retry_after_s})
            r.status_code, r.headers["Retry-After"] = 503, str(e.retry_after_s)
            return r
        except RequestTimeout as e:
            return jsonify({"error": f"{e}; the service is slow or stuck, retry later",
                            "status": 504}), 504
        return jsonify(payload), status

    @app.route("/", methods=["GET", "POST"])
    def index() -> tuple[str, int] | Response:
        context = page_context(service)
        wants = request.method == "POST" or "sample" in request.values
        if not wants:
            return render_template("index.html", **context), 200
        try:
            payload, status = analyse()
        except InputError as e:
            return render_template("index.html", error=str(e), **context), e.status
        except Overloaded as e:
            r = Response(render_template("index.html", error=str(e), **context), status=503)
            r.headers["Retry-After"] = str(e.retry_after_s)
            return r
        except RequestTimeout as e:
            return render_template("index.html", error=f"{e}; retry later", **context), 504
        return render_template("index.html", result=payload, **context), status

    @app.get("/samples/<int:index>.png")
    def sample_png(index: int) -> Response:
        if service.samples is None or not 0 <= index < len(service.samples):
            return Response("no such test sample", status=404, mimetype="text/plain")
        return Response(tensor_to_png(service.samples.images[index], scale=3),
                        mimetype="image/png")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e: RequestEntityTooLarge) -> tuple[Any, int]:
        msg = (f"the upload is over the limit of {limits.max_bytes / 2**20:.1f} MB; send a "
               "smaller image or restart `serve` with a larger --max-upload-mb")
        return error_response(msg, 413)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Any, int]:
        return error_response(f"{e.name}: {e.description}", e.code or 500)

    def error_response(msg: str, status: int) -> tuple[Any, int]:
        if request.path.startswith("/api/"):
            return jsonify({"error": msg, "status": status}), status
        return render_template("index.html", error=msg, **page_context(service)), status

    return app


def page_context(service: WebService) -> dict[str, Any]:
    """What every render of the page needs beside the result."""
    strip = service.strip
    classes = service.models[0].info.classes if service.models else []
    picks: list[tuple[int, str]] = []
    if service.samples is not None:  # the first test image of each class
        seen: set[int] = set()
        for i, y in enumerate(service.samples.labels.tolist()):
            if y not in seen:
                seen.add(y)
                picks.append((i, classes[y] if y < len(classes) else str(y)))
            if len(seen) == len(classes):
                break
        picks.sort(key=lambda p: service.samples.labels[p[0]].item())
    n = len(service.samples) if service.samples is not None else 0
    return {"service": service, "picks": picks, "n_samples": n,
            "random_sample": random.randrange(n) if n else None,
            "policies": strip.policy_options() if strip else [],
            "selected_policy": _policy_param() or (
                strip.default_policy() if strip else None)}


def _policy_param() -> str | None:
    """The ``policy`` parameter; only the query string when the body itself was refused."""
    try:
        return request.values.get("policy") or None
    except HTTPException:
        return request.args.get("policy") or None


def _upload_file() -> Any:
    if "image" not in request.files:
        raise InputError("no file in the form field 'image'; choose a PNG or JPEG file "
                         "(or pass sample=I for a test image)", 400)
    return request.files["image"]


def read_input(service: WebService, limits: Limits, info: Any
               ) -> tuple[torch.Tensor, dict[str, Any], int | None]:
    """This request's image as one method's uint8 ``(C, H, W)`` input, what it was, its label
    (test samples only): from ``sample=I``, or an upload in field ``image``."""
    if "sample" in request.values and not request.files.get("image"):
        index, x, label = _sample(service, request.values.get("sample", ""))
        return resize_input(x, info), {"kind": "test-sample", "sample_index": index}, label
    if request.method != "POST":
        raise InputError("nothing to classify: upload a file in field 'image' (POST) or pass "
                         "sample=I", 400)
    f = _upload_file()
    data = f.read(limits.max_bytes + 1)
    img = check_upload(data, f.filename, limits)
    conv = to_input(data, img, info)
    return conv.tensor, {"kind": "upload", "format": img.format,
                         "inverted": conv.inverted}, None


def classify_payload(served: Served, requested: str, source: dict[str, Any],
                     label: int | None) -> dict[str, Any]:
    """One method's answer for one image, with its queue and compute time."""
    out = {**served.value, "requested": requested, "queue_ms": served.queue_ms,
           "compute_ms": served.compute_ms, "batch_size": served.batch_size, "source": source}
    if label is not None:
        out["label"], out["correct"] = label, out["answer_index"] == label
    return out


def _sample(service: WebService, raw: str) -> tuple[int, torch.Tensor, int]:
    """(index, uint8 image, label) of test sample ``raw``; ``InputError`` when there is none."""
    if service.samples is None:
        raise InputError(f"no test samples here ({service.sample_note}); upload an image", 404)
    try:
        index = int(raw)
    except ValueError:
        raise InputError(f"sample must be an integer index, got {raw!r}", 400) from None
    n = len(service.samples)
    if not 0 <= index < n:
        raise InputError(f"sample {index} is out of range; the test split has samples 0..{n - 1}",
                         404)
    return index, service.samples.images[index], int(service.samples.labels[index])


def analyse_sample(engine: ServingEngine, raw: str, policy: str | None) -> dict[str, Any]:
    """Payload for test sample ``raw`` (an index into the run's test split)."""
    service = engine.service
    index, x, label = _sample(service, raw)
    inputs = {m.name: resize_input(x, m.info) for m in service.models}
    classes = service.models[0].info.classes
    source = {"kind": "test-sample", "sample_index": index,
              "sample_id": int(service.samples.ids[index]), "label": label,
              "label_class": classes[label] if label < len(classes) else str(label),
              "input_shape": list(x.shape), "inverted": False}
    served = resize_input(x, engine.default.info)
    return _payload(engine, inputs, source, x, label, policy, served)


def analyse_upload(engine: ServingEngine, data: bytes, filename: str | None, limits: Limits,
                   policy: str | None) -> dict[str, Any]:
    """Payload for an uploaded image, converted per model the way its dataset was."""
    service = engine.service
    img = check_upload(data, filename, limits)
    fmt = img.format
    inputs: dict[str, torch.Tensor] = {}
    converted_by_info: dict[tuple, Any] = {}
    for m in service.models:
        key = (m.info.in_channels, m.info.input_size, tuple(m.info.mean))
        if key not in converted_by_info:
            converted_by_info[key] = to_input(data, img, m.info)
        inputs[m.name] = converted_by_info[key].tensor
    # The dataset-native input (what the routers see): the baseline's, else the largest.
    native = service.native_model()
    first = converted_by_info[(native.info.in_channels, native.info.input_size,
                               tuple(native.info.mean))]
    source = {"kind": "upload", "filename": filename, "format": fmt,
              "original_size": list(first.original_size), "original_mode": first.original_mode,
              "input_shape": list(first.tensor.shape), "inverted": first.inverted}
    info = engine.default.info
    key = (info.in_channels, info.input_size, tuple(info.mean))
    served = (converted_by_info[key].tensor if key in converted_by_info
              else to_input(data, img, info).tensor)
    return _payload(engine, inputs, source, first.tensor, None, policy, served)


def _payload(engine: ServingEngine, inputs: dict[str, torch.Tensor], source: dict[str, Any],
             shown: torch.Tensor, label: int | None, policy: str | None,
             served_image: torch.Tensor) -> dict[str, Any]:
    service = engine.service
    done = engine.inspect(InspectJob(inputs, shown, label, policy,
                                     ClassifyJob(engine.default, served_image)))
    results, strip, answer = done.value["cards"], done.value["entries"], done.value["served"]
    png = base64.b64encode(tensor_to_png(shown, scale=4)).decode()
    t = service.timing
    k = done.batch_size
    served = None
    if answer is not None:
        served = {**answer, "queue_ms": done.queue_ms, "compute_ms": done.compute_ms,
                  "batch_size": k, "note": engine.default_note}
        if label is not None and "answer_index" in answer:
            served["correct"] = answer["answer_index"] == label
    return {
        "source": source,
        "input_png": f"data:image/png;base64,{png}",
        "baseline": asdict(service.baseline) if service.baseline else None,
        "timing_note": (f"ms per image, each model run on the batch of {k} request(s) this one "
                        f"was served in (median of {t.repeats} runs, {t.threads} thread(s), "
                        "models one after another in the server's one inference thread); a "
                        "latency share, not throughput. Batched ms/image comes from costs.json."),
        "models": [asdict(r) for r in results],
        "routers": [asdict(e) for e in strip],
        "policy": policy or (service.strip.default_policy() if service.strip else None),
        "served": served,
    }
