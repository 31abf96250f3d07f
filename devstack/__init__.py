"""Embedded default: real Kafka, Elasticsearch, S3 server, Spark and Airflow as local processes.

Production runs on Kubernetes; this stack exists so tests and the demo talk to the
same engines without a Docker engine.
"""
