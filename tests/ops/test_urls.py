"""One URL-masking function for every log line, table and message."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from ops.urls import mask_url

# Passwords as people type them: not percent-encoded, holding what URLs reserve.
PASSWORDS = ["Pw-s3cr3t@7", "a:b:c", "sl/ash/ed", "per%40cent", "all@of:th/em%21", "@:/%"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@redis-host:6379/0",
        "postgresql+psycopg://vfleet:{pw}@db-host:5432/vfleet",
        "https://user:{pw}@proxy.example/v1",
    ],
)
def test_password_never_survives_masking(template: str, password: str) -> None:
    url = template.format(pw=password)
    masked = mask_url(url)
    assert password not in masked
    assert "***" in masked
    # What is left is still the same URL to a reader: scheme, user, host, port, path.
    scheme, _, rest = template.partition("://")
    host_part = rest.split("@", 1)[1]
    assert masked == f"{scheme}://{rest.split(':', 1)[0]}:***@{host_part}"


def test_urls_inside_text_are_masked_each_and_the_rest_is_kept() -> None:
    line = (
        "connect redis://:p@ss@r1:6379/0 failed; db 'postgresql://u:x/y@db/v' "
        'json {"url": "http://k:s3:cr@h:8000/v1"} ok'
    )
    masked = mask_url(line)
    assert masked == (
        "connect redis://:***@r1:6379/0 failed; db 'postgresql://u:***@db/v' "
        'json {"url": "http://k:***@h:8000/v1"} ok'
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "sqlite:///vfleet.db",
        "postgresql://vfleet@db-host/vfleet",  # a user name is no secret
        "http://127.0.0.1:8001/v1",
        "no url here: a@b",
    ],
)
def test_text_without_a_password_is_unchanged(url: str) -> None:
    assert mask_url(url) == url


def test_what_clients_read_as_the_password_is_what_is_masked() -> None:
    # redis-py and urllib take the password up to the last '@' before the host.
    url = "redis://:Pw-s3cr3t@7@localhost:6379/0"
    assert urlsplit(url).password == "Pw-s3cr3t@7"
    assert mask_url(url) == "redis://:***@localhost:6379/0"
