"""The REST API: HTTP in, service use cases out, one router module per concern.

``create_app(service, users)`` (``app.py``) builds the FastAPI app with every router of
``ROUTERS``; ``serve_http(app, host, port)`` runs it with uvicorn in a background thread.
Add a concern as a module with an ``APIRouter`` named ``router`` and list it here.
"""

from __future__ import annotations

from gateway.rest import auth, catalog, health, lineage, policy, products, queries, query, sla
from gateway.rest.app import ApiError, HttpServer, caller, create_app, serve_http

ROUTERS = (health.router, auth.router, query.router, products.router, policy.router, queries.router, sla.router,
           catalog.router, lineage.router)
"""Every router the app serves."""

__all__ = ["ROUTERS", "ApiError", "HttpServer", "caller", "create_app", "serve_http"]
