#!/usr/bin/env bash
# `eventpipe ...` runs the task CLI directly (no Airflow database checks); everything else goes to the
# official Airflow entrypoint unchanged (Helm chart and docker compose pass `bash -c "exec airflow ..."`
# or Airflow sub-commands). KubernetesPodOperator sets the container command, so pods bypass this file.
set -euo pipefail
if [[ "${1:-}" == "eventpipe" ]]; then
  exec "$@"
fi
# Spark on Kubernetes starts executor pods on this image with the single argument "executor" and describes
# the executor in the environment (SPARK_DRIVER_URL, SPARK_EXECUTOR_*, SPARK_APPLICATION_ID,
# SPARK_RESOURCE_PROFILE_ID, SPARK_JAVA_OPT_<n>); pyspark's jars directory is a complete Spark.
if [[ "${1:-}" == "executor" ]]; then
  spark_home="$(python3 -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  java_opts=()
  while IFS='=' read -r _ value; do
    java_opts+=("$value")
  done < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n)
  exec java "${java_opts[@]}" -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
    -cp "${SPARK_CONF_DIR:+${SPARK_CONF_DIR}:}${spark_home}/jars/*" \
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
    --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}" --cores "${SPARK_EXECUTOR_CORES}" \
    --app-id "${SPARK_APPLICATION_ID}" --hostname "${SPARK_EXECUTOR_POD_IP}" \
    --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" --podName "${SPARK_EXECUTOR_POD_NAME}"
fi
exec /entrypoint "$@"
