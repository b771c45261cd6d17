"""One thin module per DVC stage: read params, call the library, write outputs, log to MLflow.

This is the only layer that knows about params.yaml, output paths and MLflow.
"""
