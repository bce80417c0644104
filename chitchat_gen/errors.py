"""The failures a user sees as one `Error:` line: the run cannot start, the model failed, a write failed.

A leaf module (it imports nothing of the package), so any module can raise them without
importing the settings tables or the engines.

    >>> try:
    ...     raise ConfigError("task.yaml: max_turns: expected a whole number >= 1, got 0")
    ... except ConfigError as exc:
    ...     print(f"Error: {exc}")
    Error: task.yaml: max_turns: expected a whole number >= 1, got 0
"""


class ConfigError(Exception):
    """A problem the user fixes in a file or a flag, before any work; printed as one `Error:` line."""


class LMError(Exception):
    """An LM call that failed for good (after retries): the conversation is dropped."""


class NoAnswer(LMError):
    """Every server takes calls and answers none (they time out): the run stops, not one conversation."""


class Unreachable(ConfigError):
    """A server that did not answer the start-up check; among several, the others carry the run."""


class WriteError(Exception):
    """A write to the output folder failed (disk full, quota, size limit, I/O error): the run stops."""
