"""Trace mode: one conversation, printed stage by stage, to learn the pipeline or debug prompts.

    python -m chitchat_gen trace --engine local --seed 3

For every LM call it prints the messages sent (long ones trimmed); how much of them opens as an
earlier call of the conversation did, the one sharing the most (what a server's prefix cache
could reuse), and the text where the two first differ; and the raw reply; after every stage, what the stage decided (the steps it added, or why it dropped the conversation).
Plain text in 80 columns; colour only when stdout is a terminal.
"""

from __future__ import annotations

import sys
import textwrap

WIDTH = 80
COLOURS = {"stage": "1;36", "sent": "2", "reply": "33", "decided": "1;32", "drop": "1;31"}


def make_printer(out=sys.stdout):
    """Return `trace(event, **data)`, the hook the pipeline calls; it prints to `out`."""
    colour = out.isatty()
    earlier: list[tuple[str, str]] = []  # (call, its messages flattened) of this conversation

    def paint(kind: str, text: str) -> str:
        return f"\033[{COLOURS[kind]}m{text}\033[0m" if colour else text

    def block(label: str, text: str, kind: str, max_lines: int = 12) -> None:
        lines = []
        for paragraph in text.splitlines() or [""]:
            lines += textwrap.wrap(paragraph, WIDTH - 4) or [""]
        if len(lines) > max_lines:
            hidden = len(lines) - max_lines
            lines = lines[:max_lines // 2] + [f"[... {hidden} lines trimmed ...]"] + lines[-max_lines // 2:]
        print(paint(kind, label), file=out)
        for line in lines:
            print("    " + paint(kind, line), file=out)

    def trace(event: str, **data) -> None:
        if event == "call":
            engine = data.get("engine", "default")
            answered = "" if engine == "default" else f" (engine {engine})"
            print(paint("stage", f"-- {data['stage']}: LM call{answered} ".ljust(WIDTH, "-")), file=out)
            for message in data["messages"]:
                block(f"  [{message['role']}]", message["content"], "sent")
            text = flatten(data["messages"])
            if earlier:
                name, before = max(earlier, key=lambda call: common_prefix(call[1], text))
                block("  [prefix]", prefix_note(name, before, text), "sent")
            earlier.append((f"call {len(earlier) + 1} ({data['stage']})", text))
            block("  [reply]", data["reply"], "reply")
        elif event == "stage":
            if data["drop"]:
                print(paint("drop", f"== {data['stage']} drops the conversation: {data['drop']}"), file=out)
                return
            title = f"== {data['stage']}" + (f" (turn {data['turn']}) " if data.get("turn") else " ")
            print(paint("decided", title.ljust(WIDTH, "=")), file=out)
            for step in data["steps"]:
                for line in describe(step):
                    for part in textwrap.wrap(line, WIDTH, subsequent_indent="    "):
                        print(paint("decided", part), file=out)
        elif event == "done":
            earlier.clear()  # the next call opens another conversation
            if data["drop"]:
                print(paint("drop", f"DROPPED ({data['drop']}); the runner starts another conversation"), file=out)
            else:
                print(paint("decided", f"ACCEPTED {data['conversation_id']}: {data['turns']} turns"), file=out)
        out.flush()

    return trace


def prefix_note(name: str, before: str, now: str) -> str:
    """How a call's messages open as the earlier call `name`'s did, and where they first differ.

    >>> prefix_note("call 2 (lm/flow_controller)", "<user>\\nTurn 1. Hi", "<user>\\nTurn 2. Hi")
    "opens as call 2 (lm/flow_controller) for 12 of 17 characters, then: '2. Hi'"
    """
    shared = common_prefix(before, now)
    if shared == len(now):
        return f"all {len(now):,} characters as in {name}"
    return f"opens as {name} for {shared:,} of {len(now):,} characters, then: {now[shared:shared + 60]!r}"


def describe(step: dict) -> list[str]:
    """A stage's decision in a few lines."""
    if step["role"] == "flow_controller":
        weights = ", ".join(f"{name} {w:g}" for name, w in step.get("weights", {}).items())
        return [f"eligible: {weights}",
                f"reasoning: {step.get('reasoning') or '-'}",
                f"picked: {step['content']}" + ("  -> TERMINATE (closing exchange follows)" if step.get("terminate") else ""),
                f"hint: {step.get('hint', '')}"]
    return [f"{step['role']}: {step['content']}"]


def flatten(messages: list[dict]) -> str:
    """The messages as one text, in order: what a server's prefix cache compares, near enough.

    >>> flatten([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}])
    '<system>\\nBe kind.\\n<user>\\nHi\\n'
    """
    return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)


def common_prefix(first: str, second: str) -> int:
    """How many leading characters two texts share.

    >>> common_prefix("Situation: a cafe. Turn 1", "Situation: a cafe. Turn 2")
    24
    """
    shared = 0
    for a, b in zip(first, second):
        if a != b:
            break
        shared += 1
    return shared
