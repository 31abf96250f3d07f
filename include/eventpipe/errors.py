"""The failure contract: permanent errors exit with their own code and are never retried.

A task that fails because of a network blip or a service restart should be retried; a task that
fails because its argument is invalid, or because a stored file no longer matches its manifest,
fails the same way on every retry, and retrying only delays the alert. Code raises a subclass of
:class:`PermanentError` for the second kind. The ``eventpipe`` CLI exits with
:data:`PERMANENT_EXIT_CODE` for them (and for command-line usage errors); every other failure
exits with 1. Both task paths read the exit code: the local operator and the pod operator raise
``AirflowFailException`` for :data:`PERMANENT_EXIT_CODE`, which fails the task without retries.

Exit codes of ``eventpipe``:

====  =====================================================================================
0     success
1     any other failure (transient or unknown): Airflow retries the task
3     permanent failure (:class:`PermanentError`, invalid command line): no retries
====  =====================================================================================
"""

from __future__ import annotations

# 2 is what click, argparse and shells use for usage errors; the CLI folds those into this code,
# so the orchestrator has one number to look for.
PERMANENT_EXIT_CODE = 3


class PermanentError(Exception):
    """A failure that a retry cannot fix; the task fails at once."""

    exit_code = PERMANENT_EXIT_CODE


class InvalidArgument(PermanentError, ValueError):
    """An argument or parameter is malformed or out of range."""


class InvalidConfiguration(PermanentError):
    """A required setting is missing or contradicts another (fix the deployment, then rerun)."""


class ManifestMismatch(PermanentError):
    """Stored data (archive files, Elasticsearch documents) differs from what its manifest records."""


class ChecksumMismatch(ManifestMismatch):
    """A stored file's sha256 or row count differs from its manifest entry: the object is corrupt."""


class ManifestInvalid(PermanentError):
    """A stored manifest cannot be parsed or does not match the manifest schema."""


class ManifestMissing(PermanentError):
    """A manifest that must exist (the day was committed, or is being restored) is not there."""


def is_permanent(exit_code: int | None) -> bool:
    """True for the process exit code that marks a permanent failure."""
    return exit_code == PERMANENT_EXIT_CODE
