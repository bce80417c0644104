"""The two failures a user sees as one `Error:` line: the run cannot start, or the model failed.

A leaf module (it imports nothing of the package), so any module can raise them without
importing the config tables or the engines.

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
