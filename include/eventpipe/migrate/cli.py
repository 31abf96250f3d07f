"""`eventpipe migrate`: inventory a deployment's pipeline state, and verify a migration target against it.

The target's connection settings come from an env file (the same EVENTPIPE_* and AWS_* names as the
environment; never argv). ``verify`` exits 3 listing every difference, so a migration task fails without
retries and the pipeline stays on the source. When the source is down (a move between clusters that cannot
run together), ``inventory --out`` saves the source's inventory before it stops and ``verify --against`` checks
the target against that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from dotenv import dotenv_values

from eventpipe.errors import InvalidArgument
from eventpipe.migrate.inventory import Inventory
from eventpipe.params import parse_topics
from eventpipe.results import emit
from eventpipe.settings import Settings

migrate_app = typer.Typer(no_args_is_help=True, help=__doc__)

Topics = Annotated[str, typer.Option("--topics", help="Comma-separated source topics (default: all)")]
NoArchive = Annotated[bool, typer.Option("--no-archive", help="Leave the archive's committed days out")]


def target_settings(path: Path) -> Settings:
    """Settings from an env file only (nothing from this process's environment leaks into the target)."""
    if not path.is_file():
        raise InvalidArgument(f"--target-env {path}: no such file")
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    if not any(k.startswith("EVENTPIPE_") for k in values):
        raise InvalidArgument(f"--target-env {path}: no EVENTPIPE_* setting in it; name the target's endpoints")
    return Settings.from_env(values)


Out = Annotated[Path | None, typer.Option("--out", help="Also write the inventory to this JSON file")]
Against = Annotated[
    Path | None, typer.Option("--against", help="A saved source inventory (`inventory --out`), not the live source")
]


def load_inventory(path: Path) -> Inventory:
    if not path.is_file():
        raise InvalidArgument(f"--against {path}: no such file")
    try:
        return Inventory.model_validate_json(path.read_text())
    except ValueError as exc:
        raise InvalidArgument(f"--against {path}: not an inventory ({str(exc).splitlines()[0]})") from exc


@migrate_app.command()
def inventory(topics: Topics = "", no_archive: NoArchive = False, out: Out = None) -> None:
    """Partitions and offsets, the ingest group's commits, documents, drain manifests, archive days."""
    from eventpipe.migrate.inventory import take_inventory

    taken = take_inventory(Settings.from_env(), parse_topics(topics), archive=not no_archive)
    if out is not None:
        out.write_text(taken.model_dump_json(indent=1))
    emit("migrate inventory", taken.model_dump(mode="json"))


@migrate_app.command()
def verify(
    target_env: Annotated[Path, typer.Option("--target-env", help="Env file with the target's settings")],
    topics: Topics = "",
    no_archive: NoArchive = False,
    against: Against = None,
) -> None:
    """Compare the target deployment with this one, or with a saved inventory of it (ingest paused on both);
    exit 3 on any difference."""
    from eventpipe.migrate.inventory import take_inventory
    from eventpipe.migrate.verify import compare, require_identical

    names = parse_topics(topics)
    target = target_settings(target_env)
    source_inventory = (
        load_inventory(against)
        if against is not None
        else take_inventory(Settings.from_env(), names, archive=not no_archive)
    )
    target_inventory = take_inventory(target, names, archive=not no_archive)
    differences = compare(source_inventory, target_inventory)
    emit(
        "migrate verify",
        {
            "identical": not differences,
            "differences": [d.model_dump(mode="json") for d in differences],
            "partitions": sum(len(p) for p in source_inventory.topics.values()),
            "indices": len(source_inventory.events_per_index),
            "manifests": len(source_inventory.manifests),
            "archive_days": len(source_inventory.archive_days),
        },
    )
    require_identical(source_inventory, target_inventory)
