"""Where a record's result came from: instance, host, GPU indices, model id, max_model_len.

:class:`InstanceProvenance` asks the instance's ``/v1/models`` (the served model's id and
``max_model_len``) and caches the answer for :data:`REFRESH_SECONDS`, so a server restarted
with another model or context is noticed; a failed lookup is retried after
:data:`RETRY_SECONDS`, and the last answer (or the fleet file's facts) is returned meanwhile.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ops.endpoint import DirectHttp, HttpClient, ProbeError, auth_headers, model_cards, models_url
from workers.fleet import InstanceConfig

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
RETRY_SECONDS = 60.0
REFRESH_SECONDS = 600.0


class InstanceProvenance:
    """The provenance dict of one instance's results. Thread-safe."""

    def __init__(
        self,
        instance: InstanceConfig,
        *,
        http_client: HttpClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.instance = instance
        self._http = http_client or DirectHttp(timeout=timeout)
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None

    def get(self) -> dict[str, Any]:
        """Return ``{"instance", "host", "worker_host", "gpus", "model", "max_model_len"}``."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._fetched_at < REFRESH_SECONDS:
                return self._cached
            if self._failed_at is not None and now - self._failed_at < RETRY_SECONDS:
                return self._cached or self._base(None)
            card = self._fetch()
            if card is None:
                self._failed_at = now
                return self._cached or self._base(None)
            self._cached, self._fetched_at, self._failed_at = self._base(card), now, None
            return self._cached

    def _base(self, card: dict[str, Any] | None) -> dict[str, Any]:
        inst = self.instance
        return {
            "instance": inst.name,
            "host": inst.host or urlsplit(inst.base_url).hostname,
            "worker_host": socket.gethostname(),
            "gpus": list(inst.gpus),
            "model": (card or {}).get("id") or inst.model,
            "max_model_len": (card or {}).get("max_model_len"),
        }

    def _fetch(self) -> dict[str, Any] | None:
        inst = self.instance
        try:
            resp = self._http.get(models_url(inst.base_url), headers=auth_headers(inst.api_key()))
            cards = model_cards(resp)
        except ProbeError as e:
            logger.warning("instance %s: /v1/models failed: %s", inst.name, e)
            return None
        card = next((c for c in cards if c.id == inst.model), cards[0] if cards else None)
        return None if card is None else {"id": card.id, "max_model_len": card.max_model_len}
