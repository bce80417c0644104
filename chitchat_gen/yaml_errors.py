r"""A YAML syntax error of a task file in one line: the line the typo is on, and the fix.

task.py imports this only when PyYAML refuses a file.

    >>> import yaml
    >>> text = "task_name: x\nmax_turns 4\nmin_turns: 1\n"
    >>> try:
    ...     yaml.safe_load(text)
    ... except yaml.YAMLError as exc:
    ...     print(yaml_problem("task.yaml", text, exc))
    task.yaml line 2: not valid YAML (a line with no ':'): write 'key: value', or indent it as the continuation of the line above
"""

from __future__ import annotations

from pathlib import Path

import yaml

# The fix for PyYAML's commonest problems, by words of its message.
YAML_FIXES = [
    ("'\\t'", "replace the tab with spaces (YAML indents with spaces only)"),
    ("mapping values are not allowed here", "indent this line like the keys beside it, or quote a value that holds ': '"),
    ("but found '<scalar>'", "put the whole value inside its quotes"),
    ("expected <block end>", "indent this line like the keys beside it (with spaces)"),
]


def yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> str:
    """A YAML syntax error as "task.yaml line 5: not valid YAML (...): <fix>", the line the typo is on.

    PyYAML's marks are 0-based, and its `problem_mark` is where parsing failed, which for some
    typos is a later line: a missing ':' fails on the next line, an unclosed quote or bracket
    where the file (or the next quote) ends. Those errors also carry a `context_mark`: where the
    key, quote or bracket began, the line to fix. (A block mapping's context_mark is where the
    whole mapping starts, no help: its problem_mark is the line to fix.)
    """
    problem, context = getattr(exc, "problem", None) or str(exc), getattr(exc, "context", None) or ""
    mark = getattr(exc, "problem_mark", None)
    starts_at = getattr(exc, "context_mark", None)
    if starts_at and context.startswith(("while scanning a", "while parsing a flow")):
        mark = starts_at
    fix = next((fix for words, fix in YAML_FIXES if words in problem), "fix the syntax")
    if "quoted scalar" in context:
        problem, fix = "a quote is not closed", "close the quote opened on this line"
    elif "simple key" in context:
        problem, fix = "a line with no ':'", "write 'key: value', or indent it as the continuation of the line above"
    elif context.startswith("while parsing a flow"):
        # "a flow node": the file ended right after a [ or {, and the mark is past its last line.
        opened = _unclosed_bracket(text) if "node" in context else None
        opening, closing = opened[0] if opened else "[]" if "sequence" in context else "{}"
        problem, fix = f"a {opening} is not closed", f"close it with {closing}"
        if opened:
            mark = opened[1]
    if mark is None:
        return f"{path}: not valid YAML ({problem}): {fix}"
    line = mark.line
    opened = _quote_closing_on(text, line)
    if opened is not None:
        # An unclosed quote runs on to the next quote in the file (an apostrophe, a quoted word in
        # a comment), and the error shows only there: point at the quote's opening line.
        problem = f"the quote opened on this line closes only on line {line + 1}"
        line, fix = opened, "close the quote on this line, or put the whole value on one line"
    return f"{path} line {line + 1}: not valid YAML ({problem}): {fix}"


def _quote_closing_on(text: str, line: int) -> int | None:
    """The 0-based line a quoted string that ends on `line` (0-based) began on, if it spans lines."""
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.line > line:
                break
            if (isinstance(token, yaml.ScalarToken) and token.style in ('"', "'")
                    and token.start_mark.line < line == token.end_mark.line):
                return token.start_mark.line
    except yaml.YAMLError:
        pass  # the scan stops at the same error: no quoted string ended on `line` before it
    return None


def _unclosed_bracket(text: str):
    """The innermost [ or { still open where `text` ends, as ("[]" or "{}", its start mark), or None."""
    opened = []
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)):
                opened.append(token)
            elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)) and opened:
                opened.pop()
    except yaml.YAMLError:
        pass  # the tokens up to the error are the ones that matter
    if not opened:
        return None
    return "[]" if isinstance(opened[-1], yaml.FlowSequenceStartToken) else "{}", opened[-1].start_mark
