"""``resnexus serve``: a checkpoint behind an HTTP API with dynamic batching, and a web page.

Only the CLI imports this package (it needs the ``serve`` extra: FastAPI, uvicorn,
python-multipart, prometheus-client).
"""

from .app import Limits, create_app, serve

__all__ = ["Limits", "create_app", "serve"]
