"""Infrastructure clients, configured from Settings: S3 (``s3``) and Elasticsearch (``elastic``: client,
index mappings as package data in ``mappings.json``, bulk writes with retries)."""
