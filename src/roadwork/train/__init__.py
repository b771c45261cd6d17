"""Training on cached features: the feature cache (``embed``) and head training (``head``, ``losses``)."""
