"""Operator rules for the stateful services on Kubernetes (Kafka, Elasticsearch) and the readers feeding them.

``rules`` holds pure decisions (may this broker restart, may this PVC grow); ``kafka_state`` and
``es_state`` read their inputs from the live services; ``expand`` applies them to a StatefulSet.
"""
