"""Experiment specs, replications and sweeps on Ray, result store, statistics, phase assessments."""
