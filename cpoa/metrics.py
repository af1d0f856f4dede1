"""Prometheus metrics of CPOA (prometheus-client)."""
