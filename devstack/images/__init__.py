"""Container images built here without a registry: the eventpipe task image and the services it talks to.

``build(names)`` is the one entry point (``eventpipe devstack images build [names]``); Compose's local override and
the Kubernetes StatefulSets use the tags it returns. Names: ``eventpipe`` (the task image, ``devstack.cluster.image``)
and ``kafka``, ``elasticsearch``, ``s3``, ``postgres`` (``devstack.images.services``).
"""

from __future__ import annotations

from collections.abc import Iterable

IMAGES = ("eventpipe", "kafka", "elasticsearch", "s3", "postgres")


def build(names: Iterable[str] = IMAGES) -> dict[str, dict[str, object]]:
    """Build the named images in order (each skipped when its inputs are unchanged); name -> tag, built, seconds."""
    from devstack.cluster.image import IMAGE, build_image
    from devstack.images.services import build_service_image
    from devstack.runtime import DevstackError

    wanted = list(dict.fromkeys(names)) or list(IMAGES)
    unknown = sorted(set(wanted) - set(IMAGES))
    if unknown:
        raise DevstackError(f"unknown images {unknown}; known: {list(IMAGES)}")
    results: dict[str, dict[str, object]] = {}
    for name in wanted:
        results[name] = {"tag": IMAGE, **build_image()} if name == "eventpipe" else build_service_image(name)
    return results
