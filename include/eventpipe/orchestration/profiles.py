"""Named resource profiles for task pods; DAGs pick a name, never raw numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceProfile:
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    ephemeral_storage: str = "1Gi"
    # Spark drivers create executor pods, which the plain task account may not: they run as their own
    service_account: str | None = None


PROFILES: dict[str, ResourceProfile] = {
    "small": ResourceProfile("100m", "256Mi", "500m", "512Mi"),
    "drain": ResourceProfile("500m", "768Mi", "2", "1536Mi", "2Gi"),
    "archive": ResourceProfile("500m", "1Gi", "2", "3Gi", "10Gi"),
    "spark-driver": ResourceProfile("1", "3Gi", "2", "4Gi", "10Gi", service_account="eventpipe-spark"),
}
