"""Offline validation of custom resources against the JSON schemas of their published CRDs.

The API server is the only full validator, but the archive task should not find out at 02:00
that a VolumeSnapshot it builds is malformed, and the manifests in ``deploy/`` are tested
without a cluster. The stored schemas are the CRDs' ``openAPIV3Schema`` (see schemas/README.md);
validation is *strict* like ``kubectl apply --validate=strict``: unknown fields are errors.
CEL rules (``x-kubernetes-validations``) are not evaluated, except the VolumeSnapshot
"exactly one source" rule, which is re-implemented because the archive depends on it.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft7Validator

from eventpipe.k8s import SNAPSHOT_CLASS

SCHEMA_DIR = "schemas"

# (apiVersion, kind) -> (schema file, namespaced)
CRD_SCHEMAS: dict[tuple[str, str], tuple[str, bool]] = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): ("volumesnapshotclass.v1.json", False),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): ("volumesnapshot.v1.json", True),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheusrule.v1.json", True),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitor.v1.json", True),
}

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY = r"^(" + _DNS_SUBDOMAIN[1:-1] + r"/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

# The CRDs type metadata as a bare object (the API server applies ObjectMeta itself); this is
# the part of ObjectMeta a manifest author can get wrong. Other ObjectMeta fields pass.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_SUBDOMAIN},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": _LABEL_KEY, "maxLength": 316},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class CrdValidationError(ValueError):
    """Raised with every problem found, one per line, each prefixed by its JSON path."""


def _strict(node: Any) -> Any:
    """Close every object that lists its properties, as strict field validation does."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            out["pattern"] = "(?i)^" + pattern[len("^(?i)") :]  # Go allows inline flags anywhere; Python does not
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def load_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The stored CRD schema for ``kind`` as published (no strictness added)."""
    try:
        filename, _ = CRD_SCHEMAS[(api_version, kind)]
    except KeyError:
        known = ", ".join(f"{v} {k}" for v, k in CRD_SCHEMAS)
        raise CrdValidationError(f"no stored schema for {api_version} {kind}; known: {known}") from None
    text = resources.files("eventpipe.k8s").joinpath(SCHEMA_DIR, filename).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator(api_version: str, kind: str) -> Draft7Validator:
    schema = _strict(load_schema(api_version, kind))
    schema["properties"]["metadata"] = OBJECT_META
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _path(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) or "."


def validate_crd(obj: dict[str, Any]) -> dict[str, Any]:
    """Validate a custom resource; returns it unchanged so calls can wrap object literals."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    validator = _validator(api_version, kind)
    problems = [
        f"{_path(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
    _, namespaced = CRD_SCHEMAS[(api_version, kind)]
    if not namespaced and "namespace" in obj.get("metadata", {}):
        problems.append(f".metadata.namespace: {kind} is cluster-scoped")
    if kind == "VolumeSnapshot":
        source = obj.get("spec", {}).get("source", {})
        sources = {"persistentVolumeClaimName", "volumeSnapshotContentName"}
        if isinstance(source, dict) and len(sources & set(source)) != 1:
            problems.append(
                ".spec.source: exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set"
            )
    if problems:
        name = obj.get("metadata", {}).get("name", "?") if isinstance(obj.get("metadata"), dict) else "?"
        raise CrdValidationError(f"{kind} {name}:\n" + "\n".join(problems))
    return obj


def volume_snapshot(
    name: str,
    namespace: str,
    pvc: str,
    *,
    snapshot_class: str = SNAPSHOT_CLASS,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A validated ``VolumeSnapshot`` of ``pvc``, ready for ``CustomObjectsApi.create_namespaced_custom_object``."""
    return validate_crd(
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "eventpipe", **(labels or {})},
            },
            "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": pvc}},
        }
    )


def extract_crd_schema(crd_yaml: str, version: str, origin: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version of a CRD, as a draft-07 JSON schema document."""
    import yaml

    crd = next(d for d in yaml.safe_load_all(crd_yaml) if d and d.get("kind") == "CustomResourceDefinition")
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    schema = copy.deepcopy(served[version]["schema"]["openAPIV3Schema"])
    kind = crd["spec"]["names"]["kind"]
    header = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"{crd['spec']['group']}/{version} {kind}: openAPIV3Schema extracted unchanged from {origin}",
    }
    return {**header, **schema}


def _main(argv: list[str]) -> int:
    """``python -m eventpipe.k8s.schemas CRD.yaml VERSION ORIGIN > schema.json`` (how the stored files were made)."""
    if len(argv) != 3:
        print(_main.__doc__, file=sys.stderr)
        return 2
    path, version, origin = argv
    with open(path, encoding="utf-8") as fh:
        print(json.dumps(extract_crd_schema(fh.read(), version, origin), indent=2, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


__all__ = ["CRD_SCHEMAS", "CrdValidationError", "extract_crd_schema", "load_schema", "validate_crd", "volume_snapshot"]
