"""The one task factory: a KubernetesPodOperator in production, a local process otherwise.

``Settings.kubernetes`` (set on the Airflow deployment) holds the mode, ``kubernetes`` (default)
or ``local`` (the embedded devstack), and the pods' image, namespace and service account. Read
fresh on every call: DAG files are parsed in long-lived processes whose environment tests change.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.profiles import PROFILES
from eventpipe.settings import SECRET_ENV, KubernetesSettings, Settings


def execution_mode() -> str:
    return Settings().kubernetes.execution  # a ValueError (pydantic's) for anything but kubernetes/local


def volume_snapshots_taken() -> bool:
    """Whether the nightly snapshot takes VolumeSnapshots here (the restore drill then restores them too)."""
    return Settings().archive.volume_snapshots


def cli_task(
    task_id: str, command: TaskCommand, *, profile: str = "small", mode: str | None = None, **kwargs: Any
) -> BaseOperator:
    """Build the operator that runs ``eventpipe <args>`` for ``task_id``."""
    if (mode or execution_mode()) == "local":
        from eventpipe.orchestration.local import LocalCliOperator

        return LocalCliOperator(
            task_id=task_id,
            cmds=command.argv[:1],
            arguments=command.argv[1:],
            env_vars=dict(command.env),
            secret_env_names=command.secret_env_names(),
            **kwargs,
        )
    return _pod_operator(task_id, command, profile, **kwargs)


def setup_task(**kwargs: Any) -> BaseOperator:
    """The first task of every DAG: ``eventpipe setup`` (idempotent), so no later task or sensor bootstraps."""
    return cli_task("setup", TaskCommand(["setup"]), profile="small", **kwargs)


def _pod_operator(task_id: str, command: TaskCommand, profile: str, **kwargs: Any) -> BaseOperator:
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    from eventpipe.orchestration.pod import EventpipePodOperator

    resources = PROFILES[profile]
    kube = Settings().kubernetes
    repository = _snapshot_repository(kube.snapshot_fs_claim, command.env.get("EVENTPIPE_SNAPSHOT_FS_LOCATION"))
    return EventpipePodOperator(
        task_id=task_id,
        name=f"eventpipe-{task_id}".replace("_", "-"),
        namespace=kube.namespace,
        image=kube.image,
        image_pull_policy="IfNotPresent",
        cmds=command.argv[:1],
        arguments=command.argv[1:],
        env_vars={**command.env, **pod_endpoints(kube), "HOME": "/tmp"},
        secrets=[
            Secret("env", env_name, secret_name, key)
            for secret_name in command.secrets
            for key, env_name in SECRET_ENV[secret_name].items()
        ],
        service_account_name=resources.service_account or kube.service_account,
        labels={"app.kubernetes.io/name": "eventpipe", "app.kubernetes.io/component": task_id.replace("_", "-")},
        container_resources=k8s.V1ResourceRequirements(
            requests={
                "cpu": resources.cpu_request,
                "memory": resources.memory_request,
                "ephemeral-storage": resources.ephemeral_storage,
            },
            limits={"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        ),
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=50000,
            run_as_group=0,
            fs_group=0,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()), *repository[:1]],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp"), *repository[1:]],
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=300,
        **kwargs,
    )


def pod_endpoints(kube: KubernetesSettings) -> dict[str, str]:
    """Kafka and Elasticsearch as the pods reach them, where that differs from the Airflow worker's view."""
    pairs = {"EVENTPIPE_KAFKA_BOOTSTRAP": kube.pod_kafka_bootstrap, "EVENTPIPE_ES_URL": kube.pod_es_url}
    return {name: value for name, value in pairs.items() if value}


def _snapshot_repository(claim: str | None, location: str | None) -> list[Any]:
    """An fs snapshot repository on a shared volume (claim ``EVENTPIPE_SNAPSHOT_FS_CLAIM``), mounted read-only
    at its location: the snapshot task mirrors its files to S3. [] without a claim (an s3 repository)."""
    from kubernetes.client import models as k8s

    if not (claim and location):
        return []
    source = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim, read_only=True)
    return [
        k8s.V1Volume(name="snapshot-repository", persistent_volume_claim=source),
        k8s.V1VolumeMount(name="snapshot-repository", mount_path=location, read_only=True),
    ]
