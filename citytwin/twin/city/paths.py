"""Shortest paths on the city network (free-flow times), reachability, and the zones trips use."""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from .model import City


def network_graph(city: City, weights: np.ndarray) -> csr_matrix:
    """The network as a sparse node-to-node matrix of `weights` (one value per link)."""
    n = len(city.nodes)
    # Parallel links: keep the fastest (csr sums duplicates, so take the minimum first).
    order = np.lexsort((weights, city.links.dst, city.links.src))
    src, dst, w = city.links.src[order], city.links.dst[order], weights[order]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return csr_matrix((w[first], (src[first], dst[first])), shape=(n, n))


def free_flow_times(city: City, sources: np.ndarray) -> np.ndarray:
    """Free-flow travel time (s) from each source node to every node; inf where there is no path."""
    return np.atleast_2d(dijkstra(network_graph(city, city.links.free_flow_s), indices=np.asarray(sources)))


def zone_nodes(city: City) -> np.ndarray:
    """Nodes of the largest strongly connected part of the network: any trip between them has a path."""
    graph = network_graph(city, np.ones(len(city.links)))
    _, labels = connected_components(graph, directed=True, connection="strong")
    biggest = np.bincount(labels).argmax()
    return np.flatnonzero(labels == biggest)


def od_free_flow(city: City, origin: np.ndarray, dest: np.ndarray) -> np.ndarray:
    """Free-flow time of each (origin, dest) trip, one Dijkstra per distinct origin."""
    origin, dest = np.asarray(origin), np.asarray(dest)
    out = np.empty(len(origin))
    sources, inverse = np.unique(origin, return_inverse=True)
    for start in range(0, len(sources), 256):  # bounded memory: 256 rows of the distance matrix at a time
        block = free_flow_times(city, sources[start:start + 256])
        sel = (inverse >= start) & (inverse < start + 256)
        out[sel] = block[inverse[sel] - start, dest[sel]]
    return out
