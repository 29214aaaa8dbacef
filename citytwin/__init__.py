"""citytwin: an agent-based digital twin of a Vietnamese city and a testbed for its IOC."""

__version__ = "0.1.0"
