#!/bin/bash
# Writes config/elasticsearch.yml from defaults plus every dotted environment variable (discovery.type=single-node),
# as the official image does, and runs the node as the one process of the container. Settings of modules this build
# does not have (xpack.*, s3.client.*: repository-s3) are left out with a note, since the node refuses unknown ones.
set -euo pipefail
home=/usr/share/elasticsearch
declare -A settings=(
  [cluster.name]=eventpipe
  [node.name]="${HOSTNAME:-eventpipe}"
  [path.data]="$home/data"
  [path.logs]="$home/logs"
  [path.repo]="$home/snapshots"
  [network.host]=0.0.0.0
  [http.port]=9200
  [transport.port]=9300
  [action.destructive_requires_name]=false
)
while IFS='=' read -r name value; do
  if [[ "$name" =~ ^[a-z0-9_]+(\.[a-zA-Z0-9_]+)+$ ]]; then
    case "$name" in
      xpack.* | s3.client.*) echo "entrypoint: $name left out (not in this build)" >&2 ;;
      *) settings[$name]=$value ;;
    esac
  fi
done < <(env)
for key in "${!settings[@]}"; do
  value=${settings[$key]//\\/\\\\}
  printf '%s: "%s"\n' "$key" "${value//\"/\\\"}"
done > "$home/config/elasticsearch.yml"
# shellcheck disable=SC2086 # ES_JAVA_OPTS is a word list
exec java ${ES_JAVA_OPTS:--Xms512m -Xmx1g} -XX:+UseG1GC -Dfile.encoding=UTF-8 -Djava.awt.headless=true \
  -Dlog4j2.formatMsgNoLookups=true --add-modules=jdk.incubator.vector --enable-native-access=ALL-UNNAMED \
  -cp "$home/classes:$home/lib/*" EventpipeNode "$home"
