"""Fleet monitoring scans: plain functions the beat's Celery tasks (and the CLI) call.

:mod:`workers.scan.gpus` runs nvidia-smi over SSH, :mod:`workers.scan.vllm` probes servers,
:mod:`workers.scan.snapshots` stores, reads back and prunes them, and
:mod:`workers.scan.runtime` holds what a scan worker keeps between tasks (engine, SSH
pool, Redis client).
"""
