"""Helpers for the simulator tests: plain HTTP and Prometheus scraping."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of one request; HTTP errors are returned, not raised."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(root_url: str) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and label set."""
    status, body = http("GET", f"{root_url}/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for (n, got), v in samples.items() if n == name and wanted <= got]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def names(samples: Samples) -> set[str]:
    """The sample names present."""
    return {name for name, _ in samples}
