#!/usr/bin/env bash
# One line per vLLM instance of this box: process, port, health. Exit 1 if any is down.
# Settings: see vllm-common.sh.
# shellcheck source=vllm-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/vllm-common.sh"
load_instances

status=0
printf '%-20s %-8s %-6s %-10s %s\n' INSTANCE PID PORT GPUS STATE
for line in "${INSTANCES[@]}"; do
  IFS=$'\x1f' read -r name port gpus _ <<<"$line"
  pid="$(running_pid "$name")"
  if [ -z "$pid" ]; then
    state=stopped
    status=1
  elif healthy "$port"; then
    state=healthy
  else
    state=unhealthy
    status=1
  fi
  printf '%-20s %-8s %-6s %-10s %s\n' "$name" "${pid:--}" "$port" "${gpus:--}" "$state"
done
exit "$status"
