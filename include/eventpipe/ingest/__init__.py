"""Interval-bounded drains from Kafka into Elasticsearch, dead letters and hourly rollups."""
