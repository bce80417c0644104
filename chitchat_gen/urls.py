"""Server URLs: a list of them split, one checked, its credentials masked, a path joined to it.

Gateways may want credentials in the URL: `user:password@` (sent as HTTP basic auth) or a query
such as `?api_key=...` (kept on every request). Wherever a URL is shown, `redact_url` masks both.

    >>> split_urls("http://gpu1:8000/, http://gpu2:8000")
    ['http://gpu1:8000', 'http://gpu2:8000']
    >>> redact_url("https://alice:s3cret@gw.example.com:8443/llm?api_key=s3cret&team=blue")
    'https://***@gw.example.com:8443/llm?api_key=***&team=***'
"""

from __future__ import annotations

import re

MASK = "***"


def split_urls(value) -> list[str]:
    """A URL, a comma-separated string of them or a list, as a list without trailing slashes."""
    parts = [part.strip().rstrip("/") for url in ([value] if isinstance(value, str) else value)
             for part in str(url).split(",")]
    return [part for part in parts if part]


def url_problem(url: str) -> str | None:
    """Why `url` is not a server URL (http or https, a host, an optional port, path and query), or None."""
    if re.match(r"^https?://([^/\s?#@]+@)?[^/\s:@?#]+(:\d+)?(/[^\s?#]*)?(\?[^\s#]*)?$", url):
        return None
    hint = f" (e.g. http://{url})" if "://" not in url else ""
    return f"'{redact_url(url)}' is not a URL: expected http:// or https://, a host and an optional port{hint}"


def redact_url(url: str) -> str:
    """`url` with its userinfo and every query value replaced by ***; works on malformed URLs too.

    >>> redact_url("http://localhost:11434"), redact_url("https://h?token")
    ('http://localhost:11434', 'https://h?***')
    """
    url = re.sub(r"^([a-z][a-z0-9+.-]*://)[^/?#\s]*@", rf"\1{MASK}@", url, flags=re.I)
    base, mark, query = url.partition("?")
    if not mark:
        return url
    fields = [f"{name}={MASK}" if sep else MASK
              for name, sep, _ in (part.partition("=") for part in query.split("&") if part)]
    return f"{base}?{'&'.join(fields)}"


def endpoint_url(base_url: str, path: str) -> str:
    """The URL of `path` on the server at `base_url`; its query and userinfo stay (see above).

    >>> endpoint_url("https://u:pw@gw.example.com/llm?api_key=k", "/v1/chat/completions")
    'https://u:pw@gw.example.com/llm/v1/chat/completions?api_key=k'
    """
    base, mark, query = base_url.partition("?")
    return base.rstrip("/") + path + mark + query
