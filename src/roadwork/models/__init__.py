"""Backbones (frozen feature extractors) and heads."""
