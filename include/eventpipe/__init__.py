"""eventpipe: Kafka → Elasticsearch → Spark ML → S3 event pipeline run by Airflow."""

__version__ = "0.1.0"
