"""Builds the ASGI application served by ``cpoa serve``: one engine, four routers."""

from __future__ import annotations

from fastapi import FastAPI

from cpoa.engine import Engine
from cpoa.gateway import api, callbacks, dashboard, problems


def create_app(engine: Engine) -> FastAPI:
    """Returns the gateway application bound to ``engine`` (and its store and settings).

    ``app.state.engine`` holds the engine for the routes.
    """
    app = FastAPI(title="CPOA gateway", version="1", docs_url="/docs",
                  openapi_url="/openapi.json")
    app.state.engine = engine
    problems.install(app)
    app.include_router(api.router)
    app.include_router(callbacks.router)
    app.include_router(dashboard.router)
    return app
