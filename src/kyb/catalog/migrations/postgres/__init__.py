"""Postgres schema migrations (package data, read with ``importlib.resources``)."""
