"""Airflow wiring helpers: one task factory for pods and local processes, profiles, callbacks."""
