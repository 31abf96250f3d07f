"""Kubernetes objects the pipeline creates itself (VolumeSnapshots) and their offline validation.

Names shared between ``deploy/`` and the code live here, so the manifests and the archive
task cannot drift apart (tests/test_deploy_manifests.py checks both sides).
"""

from __future__ import annotations

NAMESPACE = "eventpipe"
TASK_SERVICE_ACCOUNT = "eventpipe-task"

# The VolumeSnapshotClass in deploy/ (EVENTPIPE_VOLUME_SNAPSHOT_CLASS names it; the label marks it for tooling).
SNAPSHOT_CLASS_LABEL = "eventpipe.io/snapshot-class"
SNAPSHOT_CLASS_LABEL_VALUE = "archive"
SNAPSHOT_CLASS = "eventpipe-archive"

STORAGE_CLASS_DATA = "eventpipe-data"
STORAGE_CLASS_SCRATCH = "eventpipe-scratch"


def load_config(kubeconfig: str | None) -> None:
    """In a pod its service account; outside, the kubeconfig named by the settings (not the client's default,
    which it reads from KUBECONFIG once, at its import)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)
