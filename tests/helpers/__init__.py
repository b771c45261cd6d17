"""Shared test scaffolding (importable as ``helpers`` from the tests)."""
