"""Other training formats: an output folder's conversations as OpenAI fine-tuning JSONL or ShareGPT.

    python -m chitchat_gen export output/public/examples/chit_chat --format openai -o train.jsonl
    python -m chitchat_gen export output/public/examples/chit_chat --format sharegpt --system "Be kind." > sg.jsonl

Reads `final_data.jsonl` (the source of truth, ours or DiGiT's) one line at a time and writes
one line per conversation, so memory stays flat however large the folder:

    openai    {"messages": [{"role": "system", ...}?, {"role": "user", "content": ...}, ...]}
    sharegpt  {"id": ..., "conversations": [{"from": "system"?, "value": ...}, {"from": "human", ...}, {"from": "gpt", ...}]}

    >>> record = {"conversation_id": "c1", "steps": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    >>> to_sharegpt(record, system=None)["conversations"]
    [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello'}]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ConfigError
from .record import messages, read_jsonl, to_line
from .store import FINAL

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def to_openai(record: dict, system: str | None) -> dict:
    """A line of OpenAI's chat fine-tuning JSONL: the messages, a system message first if given."""
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages(record)}


def to_sharegpt(record: dict, system: str | None) -> dict:
    """A ShareGPT line (Axolotl, LLaMA-Factory, FastChat): roles become human / gpt."""
    turns = to_openai(record, system)["messages"]
    return {"id": record.get("conversation_id"),
            "conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in turns]}


FORMATS = {"openai": to_openai, "sharegpt": to_sharegpt}


def converted(path: Path, fmt: str, system: str | None = None):
    """Yield the records of a final_data.jsonl converted to `fmt`, one at a time.

    A line that is not a conversation record stops the export with a ConfigError naming it.
    """
    convert = FORMATS[fmt]
    for number, _, record, problem in read_jsonl(path):
        if problem is None and not (isinstance(record, dict) and isinstance(record.get("steps"), list)):
            problem = "not a conversation record (no 'steps' list)"
        if problem:
            raise ConfigError(f"{path} line {number}: {problem}: run the generate command again without --restart "
                              "to repair the folder (bad lines move to rejected.jsonl), or fix the line")
        yield convert(record, system)


def export(source: Path, fmt: str, system: str | None = None, output: Path | None = None) -> int:
    """Write the conversations of `source` (a folder or its final_data.jsonl) to `output` or stdout.

    Returns how many were written. `output` is written to a temporary file renamed at the end,
    so a failed export leaves an existing file as it was and no half file behind.
    """
    path = source / FINAL if source.is_dir() else source
    if not path.is_file():
        raise ConfigError(f"{source} not found: pass an output folder holding final_data.jsonl (or the file itself)")
    if output is None:
        count = 0
        for line in converted(path, fmt, system):
            sys.stdout.write(to_line(line))
            count += 1
        return count
    if output.resolve() == path.resolve():
        raise ConfigError(f"-o {output} is the file being exported: choose another output file")
    tmp = output.with_name(output.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            count = 0
            for line in converted(path, fmt, system):
                out.write(to_line(line))
                count += 1
        os.replace(tmp, output)
    except OSError as exc:
        raise ConfigError(f"cannot write {output} ({exc.strerror}): choose a writable path with -o")
    finally:
        tmp.unlink(missing_ok=True)
    return count
