"""The road network as GeoJSON, for maps that are not matplotlib (the IOC dashboard)."""

from __future__ import annotations

import numpy as np

from .model import City


def city_geojson(city: City) -> dict:
    """Links as LineStrings in lon/lat, one feature per street segment (the two directions of a two-way
    street share one). A city without geography (a TNTP net) gives an empty collection."""
    lon, lat = city.nodes.lon, city.nodes.lat
    links = city.links
    if not len(lon) or np.isnan(lon).all():
        return {"type": "FeatureCollection", "name": city.name, "features": []}
    seen: set[tuple[int, int]] = set()
    features = []
    for i in range(len(links.src)):
        a, b = int(links.src[i]), int(links.dst[i])
        pair = (min(a, b), max(a, b))
        if pair in seen:
            continue
        seen.add(pair)
        features.append({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [
                [round(float(lon[a]), 6), round(float(lat[a]), 6)],
                [round(float(lon[b]), 6), round(float(lat[b]), 6)]]},
            "properties": {"id": str(links.ids[i]), "name": str(links.name[i]),
                           "road_class": str(links.road_class[i]), "lanes": int(links.lanes[i])},
        })
    return {"type": "FeatureCollection", "name": city.name, "features": features}
