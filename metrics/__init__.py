"""Prometheus metrics read from the relay."""
