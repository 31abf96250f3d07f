#!/bin/sh
# pgrep for the XCom sidecar image: Debian's busybox has no pgrep applet, and the Kubernetes provider stops
# the sidecar with `kill -2 $(pgrep -u UID -f PATTERN)`. This is that form only: print the ids of processes
# owned by UID whose command line (-f; else the name) contains PATTERN, never this script's own; exit 1 if none.
# Every error goes to /dev/null: the provider reads anything on stderr as a failed command.
exec 2>/dev/null
uid='' full=''
while [ $# -gt 1 ]; do
  case $1 in
    -u) uid=$2; shift 2 ;;
    -f) full=1; shift ;;
    *) break ;;
  esac
done
pattern=$1 status=1
for dir in /proc/[0-9]*; do
  pid=${dir#/proc/}
  [ "$pid" = "$$" ] && continue
  if [ -n "$uid" ] && [ "$(stat -c %u "$dir")" != "$uid" ]; then continue; fi
  if [ -n "$full" ]; then command=$(tr '\000' ' ' < "$dir/cmdline"); else read -r command < "$dir/comm"; fi
  case $command in
    *"$pattern"*) echo "$pid"; status=0 ;;
  esac
done
exit $status
