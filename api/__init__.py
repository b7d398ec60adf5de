"""api: the Flask REST API (app factory, blueprints, validation, problem+json errors).

Imports `jobs` and the torch-free parts of `s4c_engine` only; never torch, never `worker`.
Build it with `create_app(settings)`.
"""

from api.app import StartupError, create_app

__all__ = ["StartupError", "create_app"]
