"""What a server instance is configured with (the CLI fills it from its options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.model import Role


def _default_rates() -> dict[Role, float]:
    # Requests per second per key. A citizen app posts a report now and then; devices and operators poll.
    return {Role.CITIZEN: 5.0, Role.DEVICE: 50.0, Role.OPERATOR: 50.0, Role.ADMIN: 1000.0}


@dataclass
class Settings:
    db_url: str = "sqlite:///ioc.sqlite3"
    mqtt_url: str | None = None
    timezone: str = "Asia/Ho_Chi_Minh"  # Open311 datetimes are shown with this offset
    max_body_bytes: int = 1_000_000
    network: dict[str, Any] | None = None  # GeoJSON FeatureCollection of the road network (dashboard)
    tick_s: float = 10.0  # how often missing-data and auto-clear rules run
    rate_limits: dict[Role, float] = field(default_factory=_default_rates)
    notify: bool = True  # send NGSI-LD notifications to subscribers
    key_cache_s: float = 5.0  # how long a key lookup is trusted before asking the database again

    def db_kind(self) -> str:
        """"sqlite" or "postgresql", for /health."""
        return "sqlite" if self.db_url.startswith("sqlite") else "postgresql"
