"""Spark jobs: one way to build a SparkSession, locally (devstack) and on Kubernetes."""
