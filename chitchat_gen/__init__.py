"""chitchat_gen: persona-driven multi-turn chit-chat conversations for fine-tuning chat models.

    from chitchat_gen import run
    summary = run("task.yaml", 10, engine="local")   # the CLI's run: files, resume, card, run log

    from chitchat_gen import load_task, generate
    task = load_task("task.yaml")
    for record in generate(task, 3, chat=my_chat, seed=1):   # records only, no files
        print(record["conversation_id"])

`generate_on_ray(task, n, ...)` is the same on Ray workers (the 'ray' extra; see ray_executor.py).
"""
from .config import load_task
from .engines import make_chat
from .errors import ConfigError, LMError, WriteError
from .pipeline import generate
from .ray_executor import generate_on_ray
from .run import run
from .stages import STAGES, stage

__all__ = ["run", "load_task", "generate", "generate_on_ray", "make_chat", "stage", "STAGES", "ConfigError", "LMError",
           "WriteError"]
