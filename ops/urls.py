"""Masking credentials in URLs: the one function every log line, table and error uses.

A password in ``scheme://user:password@host/...`` is replaced by ``***`` wherever a URL
appears in a piece of text (a log line, an exception message, a fleet file value). Real
passwords are often not percent-encoded, and the clients vfleet uses accept that: redis-py
and urllib take the userinfo up to the *last* ``@`` before the host, and SQLAlchemy reads
``:`` and ``/`` inside a password. So the password is everything from the first ``:`` after
the user up to the last ``@`` of the URL, whatever it holds (``@``, ``:``, ``/``, ``%``).

The price of that rule: a URL with no credentials but an ``@`` in its path after a port
(``http://h:8000/v1/a@b``) is masked too. Showing too little beats showing a password.
"""

from __future__ import annotations

import re

MASK = "***"
# The password runs to the last ``@`` before whitespace: it may hold quotes and brackets
# too, so a URL inside a repr or JSON may lose a little more than its password, never less.
_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s'\"]*):(?P<password>\S*)@"
)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    ``redis://:p@ss/w:rd@host:6379/0`` → ``redis://:***@host:6379/0``; a user name stays.
    """
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
