#!/usr/bin/env bash
# Stop this box's vLLM instances: SIGTERM to each process group, SIGKILL after
# VLLM_STOP_TIMEOUT seconds. Settings: see vllm-common.sh.
# shellcheck source=vllm-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/vllm-common.sh"
load_instances

for line in "${INSTANCES[@]}"; do
  IFS=$'\x1f' read -r name _ _ _ <<<"$line"
  pid="$(running_pid "$name")"
  if [ -z "$pid" ]; then
    echo "$name: not running"
    rm -f "$(pidfile_of "$name")"
    continue
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + VLLM_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: still running after ${VLLM_STOP_TIMEOUT}s, killing" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile_of "$name")"
  echo "$name: stopped"
done
