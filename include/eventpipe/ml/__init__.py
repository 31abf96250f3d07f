"""Anomaly detection on archived events: Spark features, training, an S3 model registry, scoring."""
