"""`eventpipe storage …`: storage operations on the stateful services (a DAG task like any other command)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated

import typer

from eventpipe.errors import InvalidArgument
from eventpipe.results import emit
from eventpipe.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Storage of the stateful services: grow their volumes.")


class GateKind(str, Enum):
    kafka = "kafka"
    elasticsearch = "elasticsearch"
    none = "none"


# Where deploy/stateful puts them (deploy/networkpolicy.yaml expects the same namespaces)
DEFAULT_NAMESPACE = {GateKind.kafka: "kafka", GateKind.elasticsearch: "elastic", GateKind.none: "eventpipe"}
DEFAULT_TEMPLATE = {GateKind.kafka: "data", GateKind.elasticsearch: "elasticsearch-data", GateKind.none: "data"}


def parse_size(size: str) -> int:
    """``20Gi``, ``500M`` or bytes, as Kubernetes reads quantities; an InvalidArgument otherwise."""
    from kubernetes.utils import parse_quantity

    try:
        value = parse_quantity(size)
    except ValueError as exc:
        raise InvalidArgument(f"--size {size!r} is not a Kubernetes quantity (e.g. 20Gi)") from exc
    if value <= 0 or value != int(value):
        raise InvalidArgument(f"--size {size!r} must be a positive whole number of bytes")
    return int(value)


@app.command()
def expand(
    statefulset: Annotated[str, typer.Option("--statefulset", help="The StatefulSet whose volumes grow")],
    size: Annotated[str, typer.Option("--size", help="New size of each claim, a Kubernetes quantity (20Gi)")],
    gate: Annotated[GateKind, typer.Option("--gate", help="Restart rule between pods")],
    namespace: Annotated[str, typer.Option("--namespace", help="The StatefulSet's namespace")] = "",
    template: Annotated[
        str, typer.Option("--template", help="The volumeClaimTemplate (default: data, ES: elasticsearch-data)")
    ] = "",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds each step may wait")] = 600.0,
) -> None:
    """Grow a StatefulSet's PVCs one pod at a time, restarting a pod where the filesystem resize is offline.

    Each step waits for the service's rule (Kafka: no partition under min.insync.replicas; Elasticsearch:
    green), then verifies the new capacity. A smaller size is refused; the same size changes nothing.
    """
    from eventpipe.k8s import load_config
    from eventpipe.stateful.expand import Gate, Waiter, expand_statefulset
    from eventpipe.stateful.kube import KubeCluster

    requested = parse_size(size)
    settings = Settings.from_env()
    load_config(settings.kubernetes.kubeconfig)
    closers: list[Callable[[], None]] = []
    rule: Gate
    if gate is GateKind.kafka:
        from eventpipe.stateful.gates import KafkaGate
        from eventpipe.stateful.kafka_state import admin_client

        admin = admin_client(settings.kafka.bootstrap)
        closers.append(admin.close)
        rule = KafkaGate(admin)
    elif gate is GateKind.elasticsearch:
        from eventpipe.stateful.gates import ElasticsearchGate
        from eventpipe.storage.elastic import client

        es = client(settings)
        closers.append(es.close)
        rule = ElasticsearchGate(es)
    else:
        from eventpipe.stateful.gates import NoGate

        rule = NoGate()
    try:
        cluster = KubeCluster(namespace or DEFAULT_NAMESPACE[gate])
        claims = template or DEFAULT_TEMPLATE[gate]
        emit("storage-expand", expand_statefulset(cluster, rule, statefulset, claims, requested, Waiter(timeout)))
    finally:
        for close in closers:
            close()
