"""Spark for the devstack: the pyspark in the venv plus the jars it lacks (s3a, Kafka source).

Spark itself runs inside each job's driver (``local[N]``), so there is no service process; the
only install step is resolving ``devstack/maven/spark/pom.xml`` into ``.devstack/spark/jars``
(cached until the pom changes). On Kubernetes the image carries the same jars in
``$SPARK_HOME/jars`` instead, see ``eventpipe.sparkjobs.session``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from devstack.runtime import REPO_ROOT, DevstackError, maven_classpath, subdir

POM = REPO_ROOT / "devstack" / "maven" / "spark" / "pom.xml"


def _pyspark_version() -> str:
    try:
        import pyspark
    except ImportError:
        return "?"
    return pyspark.__version__


SPARK_VERSION = _pyspark_version()


def pinned_version(name: str) -> str:
    """A version property of the committed pom (e.g. ``spark.version``, ``hadoop.version``)."""
    match = re.search(rf"<{re.escape(name)}>([^<]+)<", POM.read_text())
    return match.group(1) if match else "?"


@lru_cache(maxsize=1)
def spark_jars() -> list[Path]:
    """The extra jars, resolved once per pom into ``.devstack/spark/jars``."""
    if SPARK_VERSION != "?" and pinned_version("spark.version") != SPARK_VERSION:
        raise DevstackError(
            f"pyspark {SPARK_VERSION} is installed but {POM} is pinned to Spark {pinned_version('spark.version')}; "
            "align them (the hadoop-aws version must match pyspark's bundled hadoop-client)"
        )
    return maven_classpath(POM, subdir("spark", "jars"))
