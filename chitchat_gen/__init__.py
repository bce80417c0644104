"""chitchat_gen: persona-driven multi-turn chit-chat conversations for fine-tuning chat models.

    from chitchat_gen import run
    summary = run("task.yaml", 10, engine="local")   # the CLI's run: files, resume, card, run log

    from chitchat_gen import load_task, generate
    task = load_task("task.yaml")
    for record in generate(task, 3, chat=my_chat, seed=1):   # records only, no files
        print(record["conversation_id"])

`generate` here is plug.generate: the core's loop (pipeline.generate) with the quality gates,
load control, retries and the embedded model plugged in. `generate_on_ray(task, n, ...)` is the same on
Ray workers (the 'ray' extra). Names are imported when first used, so `import chitchat_gen`
and `from chitchat_gen import load_task` load the core only.
"""

import importlib

# name -> the module that defines it
_FROM = {"load_task": "task", "generate": "plug", "make_chat": "plug", "run": "lifecycle",
         "generate_on_ray": "ray_executor", "stage": "stages", "STAGES": "stages",
         "ConfigError": "errors", "LMError": "errors", "WriteError": "errors"}

__all__ = list(_FROM)


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module 'chitchat_gen' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_FROM])
