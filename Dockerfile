# One image for Airflow (api-server, scheduler, dag-processor, triggerer, KubernetesExecutor workers) and for
# the eventpipe task pods, so both always run the same package version.
#
#   docker build -t eventpipe:0.1.0 .
#   docker run --rm eventpipe:0.1.0 eventpipe --help          # the task CLI (what pods run)
#   docker run --rm eventpipe:0.1.0 airflow version           # anything else goes to the official entrypoint
#
# BASE selects where the operating system, Python 3.11 and the JRE come from:
#   airflow (default): the official Apache Airflow image for the pinned Airflow version (needs an image registry).
#   debian: no image registry at all. DEBIAN_ROOTFS is an image made FROM scratch out of Debian packages
#     (debootstrap + `docker import`), and Spark's jars come from the build context (spark-jars/) instead of a
#     Maven container. `eventpipe devstack image` (devstack.cluster.image) prepares both and builds with
#     --network=host (package registries only). Needs BuildKit: unused stages are skipped.
# Not built in this repository's CI by default; docker-compose.yaml and helm-values.yaml use the airflow base.
ARG BASE=airflow
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG DEBIAN_ROOTFS=eventpipe/debian-rootfs:bookworm

# Spark's extra jars (hadoop-aws, AWS SDK v2 modules, Kafka source), pinned in the same pom the devstack
# resolves (devstack.spark), so Spark jobs find S3A and Kafka in $SPARK_HOME/jars.
FROM maven:3.9-eclipse-temurin-17 AS spark-jars-airflow
COPY devstack/maven/spark/pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DoutputDirectory=/jars -DincludeScope=runtime

FROM scratch AS spark-jars-debian
COPY spark-jars/ /jars/

FROM spark-jars-${BASE} AS spark-jars

# A headless JRE for Spark local mode (pyspark ships Spark itself; it needs only `java`). PySpark 4 supports
# Java 17 and 21: override JRE_PACKAGE if the base image's Debian release has no openjdk-17.
FROM ${AIRFLOW_IMAGE} AS base-airflow
ARG JRE_PACKAGE=openjdk-17-jre-headless
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends "${JRE_PACKAGE}" \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

# The Debian rootfs already has python3, the JRE, dumb-init and the user airflow (50000:0). A venv owned by
# airflow takes the place of the official image's ~/.local; /entrypoint just executes its arguments.
FROM ${DEBIAN_ROOTFS} AS base-debian
USER root
RUN python3 -m venv /opt/eventpipe/venv \
 && mkdir -p /opt/airflow \
 && chown -R 50000:0 /opt/eventpipe /opt/airflow \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
 && printf '#!/bin/sh\nexec "$@"\n' > /entrypoint \
 && chmod 0755 /entrypoint
ENV PATH=/opt/eventpipe/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    AIRFLOW_HOME=/opt/airflow \
    LANG=C.UTF-8

FROM base-${BASE}
USER root
# Writable paths are only /tmp (an emptyDir in pods: the root filesystem is read-only there): Spark's local
# dirs and Python's temp files go there, the JVM's java.io.tmpdir is /tmp already, and pods set HOME=/tmp
# (eventpipe.orchestration.tasks), which moves Ivy's ~/.ivy2 there too.
ENV JAVA_HOME=/opt/java \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    SPARK_LOCAL_DIRS=/tmp/spark-local

# Python dependencies first (cached layer), as the airflow user like the official image expects.
USER airflow
COPY --chown=airflow:root requirements.txt /opt/eventpipe/requirements.txt
# The optional build secret `build-ca` is a CA bundle for pip (e.g. behind a TLS-inspecting proxy); it is
# mounted for the one command only, so it never lands in a layer.
RUN --mount=type=secret,id=build-ca,uid=50000 \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
 && pip install --no-cache-dir -r /opt/eventpipe/requirements.txt
RUN --mount=type=bind,from=spark-jars,source=/jars,target=/mnt/spark-jars \
    cp /mnt/spark-jars/*.jar "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/jars/"
# The metadata database drivers (sync and async) the official Airflow image ships and Airflow's components need
# (compose runs them on this image); the Debian base gets them here, pinned as in requirements-dev.txt.
ARG BASE
ARG PSYCOPG2=psycopg2-binary==2.9.13
ARG ASYNCPG=asyncpg==0.32.0
RUN --mount=type=secret,id=build-ca,uid=50000 \
    if [ "$BASE" = debian ]; then \
      if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi; \
      pip install --no-cache-dir "$PSYCOPG2" "$ASYNCPG"; \
    fi

# The package itself (non-editable; its dependencies are already pinned above).
COPY --chown=airflow:root pyproject.toml /opt/eventpipe/src/pyproject.toml
COPY --chown=airflow:root include/ /opt/eventpipe/src/include/
RUN --mount=type=secret,id=build-ca,uid=50000 \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
 && pip install --no-cache-dir --no-deps /opt/eventpipe/src \
 && eventpipe --help > /dev/null

# DAGs and the plugin baked in (the default dags folder); git-sync may mount over /opt/airflow/dags instead.
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/

USER root
COPY docker/entrypoint.sh /opt/eventpipe/entrypoint.sh
RUN chmod 0755 /opt/eventpipe/entrypoint.sh

# Numeric non-root user (UID 50000, GID 0 as in the official image) so runAsNonRoot can be verified.
USER 50000:0
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/eventpipe/entrypoint.sh"]
CMD []
