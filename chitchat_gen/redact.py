"""Nothing secret leaves the process: URLs, command lines and messages with credentials masked.

Everything a run prints (errors, notes, the progress line, the summary) and writes (runs.jsonl,
the dataset card) passes through here. A URL keeps its scheme, host, port and path, so it still
says which server was meant; its userinfo and its query values become `***`. A command line
also loses the value of every flag whose name says key, token, secret or password.

    >>> redact_command(["--base-url", "http://u:pw@gpu1:8000", "--hf-token", "t0k", "--max-tokens", "64"])
    "python -m chitchat_gen --base-url 'http://***@gpu1:8000' --hf-token '***' --max-tokens 64"
    >>> redact_text("HTTP 400 from http://gpu1:8000?key=k: bad header Bearer sk-12345", secrets=["sk-12345"])
    'HTTP 400 from http://gpu1:8000?key=***: bad header Bearer ***'
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Iterable

from .urls import MASK, redact_url

# A URL inside free text ends at white space, a quote or a closing bracket; a trailing ':' or
# '.' is the sentence's, not the URL's.
URL_IN_TEXT = re.compile(r"https?://[^\s'\"`<>()\[\]]+?(?=[:.,;]?(?:[\s'\"`<>()\[\]]|$))")
# "--api-key", "--hf-token", "--client_secret", "--password": a name part that says secret
# (so "--max-tokens" is not one).
SECRET_NAME = re.compile(r"(?:^|[-_])(?:api[-_]?key|key|token|secret|password|passwd)(?:$|[-_])", re.I)
SECRET_FLAG_IN_TEXT = re.compile(r"(?<![\w-])(--?[\w-]+)(=|\s+)('[^']*'|\"[^\"]*\"|[^\s'\"]+)")
SHORTEST_SECRET = 4  # a shorter "key" would mask ordinary letters all over the text


def is_secret_name(name: str) -> bool:
    """Whether a flag or setting named `name` holds a secret.

    >>> [is_secret_name(n) for n in ("--api-key", "api_key", "--hf-token", "--max-tokens", "--model")]
    [True, True, True, False, False]
    """
    return bool(SECRET_NAME.search(name.lstrip("-")))


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries: its password, and the values of query keys named like secrets.

    >>> url_secrets("https://alice:pw-123@gw.example.com/llm?api_key=k-456&team=blue")
    ['pw-123', 'k-456']
    """
    userinfo = re.match(r"^[a-z][a-z0-9+.-]*://([^/?#\s]*)@", url, flags=re.I)
    found = [userinfo.group(1).partition(":")[2]] if userinfo else []
    for name, _, value in (part.partition("=") for part in url.partition("?")[2].split("&")):
        if is_secret_name(name):
            found.append(value)
    return [secret for secret in found if secret]


def redact_command(argv: list[str], program: str = "python -m chitchat_gen") -> str:
    """The command line `program argv...`, shell-quoted, with URLs and secret flags' values masked."""
    shown, secret_next = [], False
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if secret_next and not arg.startswith("-"):
            arg = MASK
        elif arg.startswith("-") and eq and is_secret_name(flag):
            arg = f"{flag}={MASK}"
        else:
            arg = URL_IN_TEXT.sub(lambda m: redact_url(m.group()), arg)
        secret_next = arg.startswith("-") and not eq and is_secret_name(arg)
        shown.append(shlex.quote(arg))
    return " ".join([program] + shown)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` (a message, a recorded command) with URLs redacted, secret flags' values masked, and
    each of `secrets` (the API keys in use; None and short strings skipped) replaced by ***."""
    text = URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)
    text = SECRET_FLAG_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + MASK
                                   if is_secret_name(m.group(1)) and m.group(3).strip("'\"") != MASK else m.group(), text)
    for secret in secrets:
        if secret and len(secret) >= SHORTEST_SECRET:
            text = text.replace(secret, MASK)
    return text


def redact_for(text: str, tasks: Iterable[dict] = ()) -> str:
    """`text` fit to leave the process during a run of `tasks`: URL credentials, secret flags and
    the API keys in use masked (a server's error body may echo the key it was sent), of every engine."""
    engines = [engine for task in tasks for engine in (task["engine"], *task.get("engines", {}).values())]
    keys = [os.environ.get("OPENAI_API_KEY")] + [engine["api_key"] for engine in engines]
    keys += [key for engine in engines for url in engine["base_urls"] for key in url_secrets(url)]
    return redact_text(text, secrets=keys)
