"""The conversation record, documented once, and the helpers that build, read and store it.

A record is a plain dict, one line of `final_data.jsonl` (seed files use the same shape):

    {"task_name": "public/examples/chit_chat",
     "is_seed": false,                      # true in seed_examples.jsonl
     "conversation_id": "0b5e3c1f...",      # random 128-bit hex: unique across runs and machines
     "steps": [step, ...],                  # in the order the stages appended them
     "scores": {...}}                       # only with lm/judge: coherence, persona, naturalness,
                                            # closing (1-5) and a one-line reason

Every step has `role`, `content`, `stage_name` (the stage that wrote it), `metadata` and `scores`:

    role             content                        more fields
    scenario         the one-sentence scenario      -
    persona          the persona in one line        target ("user"), persona_role, expertise, domain,
                                                    goals, personality (Big-Five floats), style_override
    flow_controller  the pattern picked this turn   terminate, hint, eligible_patterns, weights, reasoning
    user             the user's message             -
    assistant        the assistant's reply          -

`metadata` says where a step belongs: {"turn": k} for steps of turn k, {} before turn 1, and
"cleaned": [...] labels what the review (gates.py) removed from the model's reply ("leaked label", ...).
A step's `scores` is DiGiT's per-step field for quality scores; no built-in stage writes it, and
it is kept (always {}) so that tools reading DiGiT's records read ours unchanged; the judge's
scores are the conversation's, at the top level.

    >>> record = new_record("demo")
    >>> record["steps"].append(new_step("user", "Hi!", "lm/user/guided", turn=1))
    >>> messages(record)
    [{'role': 'user', 'content': 'Hi!'}]
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

STEP_ROLES = ("scenario", "persona", "flow_controller", "user", "assistant")
SPEAKERS = ("user", "assistant")


def new_record(task_name: str) -> dict:
    return {"task_name": task_name, "is_seed": False, "conversation_id": uuid.uuid4().hex, "steps": []}


def new_step(role: str, content: str, stage_name: str, turn: int | None = None, **fields) -> dict:
    return {"role": role, "content": content, "stage_name": stage_name, "scores": {},
            "metadata": {"turn": turn} if turn else {}, **fields}


def last_step(record: dict, role: str) -> dict | None:
    return next((s for s in reversed(record["steps"]) if s.get("role") == role), None)


def turns(steps: list) -> int:
    """A conversation's turns: one per assistant message (a turn is a user message and its reply).

    >>> turns([{"role": "persona"}, {"role": "user"}, {"role": "assistant"}])
    1
    """
    return sum(1 for s in steps if isinstance(s, dict) and s.get("role") == "assistant")


def messages(record: dict) -> list[dict]:
    """The user and assistant messages, in order, as chat messages ({"role", "content"})."""
    return [{"role": s["role"], "content": s.get("content") or ""}
            for s in record.get("steps") or () if isinstance(s, dict) and s.get("role") in SPEAKERS]


def format_record(record: dict) -> dict:
    """The SFT view of a record, one line of formatted_output.jsonl."""
    return {"conversation_id": record["conversation_id"], "messages": messages(record)}


def to_line(value) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"


def read_jsonl(path: Path, offset: int = 0):
    """Yield (line number, text, value, problem) for each non-blank line of a JSONL file.

    `value` is the parsed JSON; `problem` is None, or why the line is not JSON ("not UTF-8
    text", "not valid JSON (Invalid control character at column 17)"), and then `value` is None.
    Streams: memory holds one line. `offset` starts at that byte (a line's start); line numbers then count from there.
    """
    for number, _, text, value, problem in read_lines(path, offset):
        if text.strip():
            yield number, text, value, problem


def read_lines(path: Path, offset: int = 0, number: int = 0):
    """Yield (line number, byte offset, text, value, problem) for every line from `offset`, blank
    ones too; `number` is the count of lines before `offset`.
    """
    with open(path, "rb") as lines:
        lines.seek(offset)
        for raw in lines:
            number += 1
            yield number, offset, *parse_line(raw)
            offset += len(raw)


def parse_line(raw: bytes) -> tuple[str, object, str | None]:
    """(text, value, problem) of one line's bytes, as read_jsonl gives them; a blank line's value is None.

    >>> parse_line(b'{"a": 1}\\n')[1:], parse_line(b'{"a" 1}\\n')[2]
    (({'a': 1}, None), "not valid JSON (Expecting ':' delimiter at column 6)")
    """
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return text, None, None
    try:
        raw.decode("utf-8")
        return text, json.loads(text), None
    except UnicodeDecodeError:
        return text, None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        # subtle: some of json's messages end in "at", waiting for the position.
        return text, None, f"not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
