"""Data: synthesis, ingest, dedupe, split and image decoding."""
