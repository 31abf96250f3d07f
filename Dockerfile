# syntax=docker/dockerfile:1
# One image for Airflow (api-server, scheduler, dag-processor, triggerer, KubernetesExecutor workers) and for
# the eventpipe task pods, so both always run the same package version.
#
#   docker build -t eventpipe:0.1.0 .
#   docker run --rm eventpipe:0.1.0 eventpipe --help          # the task CLI (what pods run)
#   docker run --rm eventpipe:0.1.0 airflow version           # anything else goes to the official entrypoint
#
# Base: the official Apache Airflow image for the pinned Airflow version (requirements.txt) on Python 3.11.
# Not built in this repository's CI (no Docker engine there); docker-compose.yaml and helm-values.yaml use it.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

# Spark's extra jars (hadoop-aws, AWS SDK v2 modules, Kafka source), pinned in the same pom the devstack
# resolves (eventpipe.devstack.spark), so Spark jobs find S3A and Kafka in $SPARK_HOME/jars.
FROM maven:3.9-eclipse-temurin-17 AS spark-jars
COPY devstack/maven/spark/pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DoutputDirectory=/jars -DincludeScope=runtime

FROM ${AIRFLOW_IMAGE}

# A headless JRE for Spark local mode (pyspark ships Spark itself; it needs only `java`). PySpark 4 supports
# Java 17 and 21: override JRE_PACKAGE if the base image's Debian release has no openjdk-17.
ARG JRE_PACKAGE=openjdk-17-jre-headless
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends "${JRE_PACKAGE}" \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java
ENV JAVA_HOME=/opt/java \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --chmod=0755 docker/entrypoint.sh /opt/eventpipe/entrypoint.sh

# Python dependencies first (cached layer), as the airflow user like the official image expects.
USER airflow
COPY --chown=airflow:root requirements.txt /opt/eventpipe/requirements.txt
RUN pip install --no-cache-dir -r /opt/eventpipe/requirements.txt
COPY --from=spark-jars --chown=airflow:root /jars/ /opt/eventpipe/spark-jars/
RUN cp /opt/eventpipe/spark-jars/*.jar "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/jars/" \
 && rm -rf /opt/eventpipe/spark-jars

# The package itself (non-editable; its dependencies are already pinned above).
COPY --chown=airflow:root pyproject.toml /opt/eventpipe/src/pyproject.toml
COPY --chown=airflow:root include/ /opt/eventpipe/src/include/
RUN pip install --no-cache-dir --no-deps /opt/eventpipe/src \
 && eventpipe --help > /dev/null

# DAGs and the plugin baked in (the default dags folder); git-sync may mount over /opt/airflow/dags instead.
COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/

# Numeric non-root user (UID 50000, GID 0 as in the official image) so runAsNonRoot can be verified.
USER 50000:0
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/eventpipe/entrypoint.sh"]
CMD []
