"""City networks from four sources, all producing one `City`."""

from __future__ import annotations

from pathlib import Path

from ..scenario.schema import CitySpec, OsmFileNetwork, OsmPlaceNetwork, SyntheticNetwork, TntpNetwork
from .model import City
from .synthetic import SyntheticParams, generate

__all__ = ["City", "build_city"]


def build_city(spec: CitySpec) -> City:
    net = spec.network
    name = spec.name or ""
    if isinstance(net, SyntheticNetwork):
        params = net.model_dump(exclude={"source"})
        return generate(SyntheticParams(**params, **({"name": name} if name else {})))
    if isinstance(net, OsmFileNetwork):
        if net.if_missing == "synthetic" and not Path(net.path).exists():
            return generate(SyntheticParams(name=f"{name or 'city'} (synthetic stand-in: {Path(net.path).name} not found)"))
        from .osm import load_osm_file

        return load_osm_file(net.path, name=name, consolidate_m=net.consolidate_m, min_link_m=net.min_link_m)
    if isinstance(net, OsmPlaceNetwork):
        from .osm import load_osm_place

        return load_osm_place(net.place, cache_dir=Path(net.cache_dir).expanduser(), name=name,
                              consolidate_m=net.consolidate_m, min_link_m=net.min_link_m)
    if isinstance(net, TntpNetwork):
        from .tntp import load_tntp_network

        return load_tntp_network(net.net, node_path=net.nodes, name=name)
    raise TypeError(f"unknown network source {net!r}")
