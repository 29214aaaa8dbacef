"""Alembic migrations of the IOC schema (a package so that setuptools ships it)."""
