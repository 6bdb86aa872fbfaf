"""The web page: upload an image (or pick a test sample), see every model and the routers.

``WebService.load(run)`` loads the run once; ``create_app(service, limits)`` builds the Flask
app; ``scripts/serve.py`` starts it on 127.0.0.1 unless told otherwise.
"""
from router.web.app import create_app
from router.web.images import InputError, Limits
from router.web.service import TimingConfig, WebService

__all__ = ["create_app", "InputError", "Limits", "TimingConfig", "WebService"]
