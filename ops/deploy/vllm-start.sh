#!/usr/bin/env bash
# Start this box's vLLM instances from the fleet file (one per GPU group), then wait until
# every one answers /v1/models. Already running instances are left alone.
# Settings: see vllm-common.sh.
# shellcheck source=vllm-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/vllm-common.sh"
load_instances
mkdir -p "$VLLM_RUN_DIR" "$VLLM_LOG_DIR"

for line in "${INSTANCES[@]}"; do
  IFS=$'\x1f' read -r name port gpus command <<<"$line"
  if [ -n "$(running_pid "$name")" ]; then
    echo "$name: already running (pid $(running_pid "$name"))"
    continue
  fi
  log="$(logfile_of "$name")"
  # setsid: the instance leads its own process group, so stop can signal all its children.
  CUDA_VISIBLE_DEVICES="$gpus" nohup setsid bash -c "exec $command" >>"$log" 2>&1 </dev/null &
  echo $! >"$(pidfile_of "$name")"
  echo "$name: started pid $! on port $port, GPUs ${gpus:-none}, log $log"
done

deadline=$((SECONDS + VLLM_START_TIMEOUT))
failed=0
for line in "${INSTANCES[@]}"; do
  IFS=$'\x1f' read -r name port _ _ <<<"$line"
  until healthy "$port"; do
    if [ -z "$(running_pid "$name")" ]; then
      echo "$name: exited; last lines of $(logfile_of "$name"):" >&2
      tail -n 20 "$(logfile_of "$name")" >&2 || true
      failed=1
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$name: not healthy after ${VLLM_START_TIMEOUT}s" >&2
      failed=1
      break
    fi
    sleep 2
  done
  if healthy "$port"; then echo "$name: healthy on port $port"; fi
done
exit "$failed"
