"""The IOC as a FastAPI server: Open311, NGSI-LD, the operator and admin APIs, the dashboard."""

from .settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings):
    """Imported lazily so `from citytwin.ioc.server import Settings` stays light."""
    from .app import create_app as _create_app

    return _create_app(settings)
