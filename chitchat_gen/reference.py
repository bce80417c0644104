"""The task file's key reference: the Markdown tables docs/task-file.md shows, made from the field
tables of task.py, extra_stages.py and gates.py (tests/test_docs.py compares them).

    python -c 'from chitchat_gen.reference import key_reference; print(key_reference(), end="")'
"""

from __future__ import annotations

import yaml

from . import extra_stages, gates, task  # noqa: F401  (extra_stages adds its stages' rows)


def key_reference() -> str:
    """The Markdown tables of every task-file key, as docs/task-file.md shows them (a test compares)."""
    sections = [("top level", task.TASK_FIELDS), ("engine", task.ENGINE_FIELDS), ("quality", gates.QUALITY_FIELDS),
                ("seed_datastore, persona_store", task.DATA_STORE_FIELDS)]
    sections += [(f"stage `{name}`", fields) for name, fields in task.STAGE_FIELDS.items() if fields]
    sections += [("each of the flow controller's `patterns`", task.PATTERN_FIELDS)]
    lines = []
    for title, fields in sections:
        lines += [f"**{title}**", "", "| key | type | default | doc |", "| --- | --- | --- | --- |"]
        for spec in fields:
            default = "required" if spec["default"] is task.REQUIRED else \
                f"`{yaml.safe_dump(spec['default']).replace(chr(10) + '...', '').strip()}`"
            flag = f" (flag `{spec['flag']}`)" if spec["flag"] else \
                f" (no flag: `{spec['override']}=` of `load_task` and `run`)" if spec["override"] else ""
            lines.append(f"| `{spec['name']}` | {task.describe(spec)} | {default} | {spec['doc']}{flag} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
