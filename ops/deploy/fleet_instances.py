"""Print the vLLM instances of a fleet file that run on one host, for the vllm-*.sh scripts.

``python3 fleet_instances.py FLEET_FILE HOST`` prints one line per instance of
``HOST`` (the fleet file's ``host`` field): name, port, CUDA_VISIBLE_DEVICES and command,
separated by ASCII 0x1f. The
command comes from the template in ``$VLLM_CMD`` with ``{model}``, ``{port}``, ``{tp}``
(GPUs per instance), ``{concurrency}`` and ``{name}`` filled in. Standard library only:
the scripts run on GPU boxes where vfleet itself may not be installed.
"""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
from typing import Any
from urllib.parse import urlsplit

DEFAULT_VLLM_CMD = (
    "vllm serve {model} --host 0.0.0.0 --port {port} --served-model-name {model}"
    " --tensor-parallel-size {tp} --max-num-seqs {concurrency}"
    " --gpu-memory-utilization {gpu_memory_utilization}"
)
DEFAULT_GPU_MEMORY_UTILIZATION = "0.90"
DEFAULT_CONCURRENCY = 16
# ASCII unit separator: unlike a tab, bash's `read` keeps an empty field (no GPUs) as such.
SEPARATOR = "\x1f"


def instance_line(inst: dict[str, Any], template: str) -> str:
    """One ``name port gpus command`` line (0x1f-separated). Raises ValueError for a bad entry."""
    name = str(inst["name"])
    port = urlsplit(str(inst["base_url"])).port
    if port is None:
        raise ValueError(f"instance {name}: base_url names no port")
    gpus = [int(g) for g in inst.get("gpus", [])]
    values = {
        "name": name,
        "port": port,
        "model": shlex.quote(str(inst["model"])),
        "tp": max(1, len(gpus)),
        "concurrency": int(inst.get("concurrency", DEFAULT_CONCURRENCY)),
        "gpu_memory_utilization": os.environ.get(
            "VLLM_GPU_MEMORY_UTILIZATION", DEFAULT_GPU_MEMORY_UTILIZATION
        ),
    }
    command = template.format(**values)
    extra = os.environ.get("VLLM_EXTRA_ARGS", "")
    if extra:
        command = f"{command} {extra}"
    return SEPARATOR.join([name, str(port), ",".join(map(str, gpus)), command])


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: fleet_instances.py FLEET_FILE HOST", file=sys.stderr)
        return 2
    path, host = argv[1], argv[2]
    try:
        with open(path, "rb") as fh:
            fleet = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"fleet file {path}: {e}", file=sys.stderr)
        return 1
    template = os.environ.get("VLLM_CMD") or DEFAULT_VLLM_CMD
    chosen = [i for i in fleet.get("instances", []) if i.get("host") == host]
    if not chosen:
        print(f"fleet file {path}: no instance has host = {host!r}", file=sys.stderr)
        return 1
    try:
        for inst in chosen:
            print(instance_line(inst, template))
    except (KeyError, ValueError) as e:
        print(f"fleet file {path}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
