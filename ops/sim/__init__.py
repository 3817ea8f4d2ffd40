"""The vLLM simulator: ``vfleet sim`` serves vLLM's OpenAI-compatible API without a GPU.

Behaviour in brief (details in each module's docstring):

* ``engine``: continuous batching, at most ``--max-num-seqs`` running, the rest FIFO; a request
  takes ``ttft + (tokens - 1) * itl`` nominal seconds, slowed by a load factor that grows
  linearly from 1.0 (one running) to ``--time-factor-under-load`` (full batch), integrated over
  time; ``--slow PORT:F`` multiplies one instance's ttft and itl.
* ``answers`` / ``schema_fill``: deterministic per seed and request body; JSON Schema answers
  via ``response_format`` json_schema or ``structured_outputs``; ``guided_json`` is ignored as
  in vLLM >= 0.12. Prompt tokens are approximated as ceil(characters / 4) (``protocol``).
* ``faults`` / ``instance``: ``--fail-rate``/``--fail-kinds`` (429 with Retry-After, 500, 503,
  hang, reset), ``--invalid-json-rate``, ``--dead-after`` and ``POST /sim/kill`` /
  ``POST /sim/revive`` (engine death: ``/health`` 503, completions 500), ``--die-after`` (the
  instance closes its port and connections; the process exits with 70 once every instance in it
  has died).
* ``metrics``: vLLM V1 names by default, V0 names with ``--metrics-version v0``.
* ``server`` runs several instances in one event loop; ``cli`` is the Typer command; ``launcher``
  (``SimFleet``, ``free_ports``) starts it as a subprocess for tests, the demo and benchmarks;
  ``bench`` measures it.
"""

from __future__ import annotations
