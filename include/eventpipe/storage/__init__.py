"""Object storage access (S3 or an S3-compatible server), configured from Settings."""
