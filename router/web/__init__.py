"""The web page: upload an image (or pick a test sample), see every model and the routers.

``WebService.load(run)`` loads the run once; ``create_app(service, limits, batching=...)`` builds
the Flask app, whose requests go through one ``ServingEngine`` (dynamic batching, bounded
queue); ``router.web.server.serve_app`` runs it on waitress; ``scripts/serve.py`` starts it on
127.0.0.1 unless told otherwise.
"""
from router.web.app import create_app
from router.web.batching import BatchConfig, DynamicBatcher, Overloaded, RequestTimeout
from router.web.images import InputError, Limits
from router.web.service import TimingConfig, WebService
from router.web.serving import ServingEngine

__all__ = ["BatchConfig", "create_app", "DynamicBatcher", "InputError", "Limits", "Overloaded",
           "RequestTimeout", "ServingEngine", "TimingConfig", "WebService"]
