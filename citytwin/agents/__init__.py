"""Citizens, IOC operators and field crews: the Mesa model that drives the twin's human side."""
