"""The devstack's re-apply of deploy/stateful after an expansion: claim templates only grow (no services)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from devstack.cluster.stateful import keep_grown_claims
from devstack.runtime import DevstackError


def _sts(size: str, name: str = "kafka", template: str = "data") -> dict[str, Any]:
    claim = {"metadata": {"name": template}, "spec": {"resources": {"requests": {"storage": size}}}}
    return {"kind": "StatefulSet", "metadata": {"name": name}, "spec": {"volumeClaimTemplates": [claim]}}


def _size(sts: dict[str, Any]) -> str:
    return sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_a_grown_live_template_is_kept_instead_of_shrunk_by_the_manifest() -> None:
    assert _size(keep_grown_claims(_sts("2Gi"), _sts("3Gi"))) == "3Gi"
    assert _size(keep_grown_claims(_sts("2Gi"), _sts("3221225472"))) == "3221225472"  # bytes, as expand writes


def test_first_apply_and_an_unchanged_size_pass_through() -> None:
    rendered = _sts("2Gi")
    assert keep_grown_claims(copy.deepcopy(rendered), None) == rendered
    assert keep_grown_claims(copy.deepcopy(rendered), _sts("2048Mi")) == _sts("2048Mi")


def test_a_larger_manifest_is_an_expansion_and_is_refused_with_the_command_to_run() -> None:
    with pytest.raises(DevstackError, match=r"grow it with `eventpipe storage expand --statefulset kafka --size 4Gi`"):
        keep_grown_claims(_sts("4Gi"), _sts("3Gi"))
