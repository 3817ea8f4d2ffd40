# shellcheck shell=bash
# Shared by vllm-start.sh, vllm-stop.sh and vllm-check.sh: which instances run on this box.
#
#   FLEET_FILE       fleet file (default: $VFLEET_FLEET_FILE, else ./fleet.toml)
#   VLLM_HOST        the fleet file's host name of this box (default: hostname -s)
#   VLLM_CMD         command template; {model} {port} {tp} {concurrency} {name}
#                    {gpu_memory_utilization} are filled in (default: vllm serve ...)
#   VLLM_EXTRA_ARGS  appended to every command
#   VLLM_GPU_MEMORY_UTILIZATION  default 0.90
#   VLLM_RUN_DIR     pidfiles (default ./vllm_run), VLLM_LOG_DIR logs (default ./vllm_logs)
#   VLLM_START_TIMEOUT / VLLM_STOP_TIMEOUT  seconds (default 900 / 60)
#   PYTHON           interpreter with tomllib, 3.11+ (default python3)
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FLEET_FILE="${FLEET_FILE:-${VFLEET_FLEET_FILE:-fleet.toml}}"
VLLM_HOST="${VLLM_HOST:-$(hostname -s)}"
VLLM_RUN_DIR="${VLLM_RUN_DIR:-vllm_run}"
VLLM_LOG_DIR="${VLLM_LOG_DIR:-vllm_logs}"
VLLM_START_TIMEOUT="${VLLM_START_TIMEOUT:-900}"
VLLM_STOP_TIMEOUT="${VLLM_STOP_TIMEOUT:-60}"
PYTHON="${PYTHON:-python3}"

# Fills the array INSTANCES with "name port gpus command" lines, fields separated by 0x1f.
load_instances() {
  local out
  out="$("$PYTHON" "$DEPLOY_DIR/fleet_instances.py" "$FLEET_FILE" "$VLLM_HOST")" || exit 1
  # shellcheck disable=SC2034  # used by the scripts that source this file
  mapfile -t INSTANCES <<<"$out"
}

pidfile_of() { printf '%s/%s.pid\n' "$VLLM_RUN_DIR" "$1"; }
logfile_of() { printf '%s/%s.log\n' "$VLLM_LOG_DIR" "$1"; }

# The pid of a running instance, or nothing.
running_pid() {
  local pidfile pid
  pidfile="$(pidfile_of "$1")"
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    printf '%s\n' "$pid"
  fi
}

# 0 when the instance's OpenAI API answers on this box.
healthy() {
  curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$1/v1/models"
}
