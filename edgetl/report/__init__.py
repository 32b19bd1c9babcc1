"""Metrics plots and reports (host side: matplotlib)."""
