"""Load and validate a task: task.yaml, its personas and its seed conversations.

Settings flow defaults -> task.yaml -> overrides (the CLI's flags). Each is one row of a table
below (name, type, default, bounds, a line of doc) checked by one checker; docs/task-file.md's
key reference is made from the rows (reference.py). A problem a user can fix is a `ConfigError`
naming the file, the field or line, and the fix.

    >>> task = load_task("task.yaml", engine="local", seed=7)    # the shipped task
    >>> task["engine"]["type"], task["personas"][0]["role"]
    ('local', 'night-shift nurse in Manchester')
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import traceback
from pathlib import Path

import yaml

from . import prompts
from .errors import ConfigError
from .record import STEP_ROLES, read_jsonl
from .stages import DEFAULT_ENGINE, MORE_STAGES, STAGES, engine_of
from .urls import MASK, split_urls, url_problem

REQUIRED = object()  # a field's default when the field must be given


def field(name: str, kind: str, default, doc: str, *, low=None, high=None, above=None, flag=None,
          override=None, secret=False) -> dict:
    """One setting. kind: int | number | bool | str | mapping | list | urls | one of "a|b|c".

    `low`/`high` are inclusive bounds, `above` an exclusive lower bound; a default of None means
    null is allowed; `flag` is the command-line flag that overrides it, and `override` the keyword
    of `load_task` and `run` that does (by default the flag's name: `--max-rpm` -> `max_rpm`); a
    `secret` value is never shown, not even in the message that refuses it.

    >>> field("max_rpm", "number", None, "requests per minute", above=0, flag="--max-rpm")["override"]
    'max_rpm'
    """
    override = override or (flag and flag.removeprefix("--").replace("-", "_"))
    return {"name": name, "kind": kind, "default": default, "doc": doc,
            "low": low, "high": high, "above": above, "flag": flag, "override": override,
            "secret": secret}


TASK_FIELDS = [
    field("task_name", "str", REQUIRED, "names the output folder: `DIR/<task_name>/`"),
    field("task_description", "str", "", "shown to the LM when a conversation has no scenario step"),
    field("max_turns", "int", 4, "a conversation never has more turns (a turn is one user message + one reply)", low=1),
    field("min_turns", "int", 1, "shorter conversations are dropped, never written", low=1),
    field("close_at_max_turns", "bool", True, "at max_turns the flow controller must pick a termination pattern"),
    field("seed", "int", None, "seeds persona, pattern and example sampling and each call's seed", flag="--seed"),
    field("engine", "mapping", {}, "the LM engine (keys below): the default engine, every stage's unless it names another"),
    field("engines", "mapping", {}, "more engines by name, each with the keys of `engine`; a stage's `engine: NAME` "
          "(DiGiT's `generator: NAME`) has its calls go there (docs/engines.md, 'Several engines in one task')"),
    field("stage_modules", "list", [], "Python files (relative to the task file, ${VAR}s expand) or modules "
          "(e.g. my_pkg.stages) to import before the stages are checked: the ones whose @stage lines register "
          "this task's own stages"),
    field("initialization_stages", "list", [], "stages run once per conversation"),
    field("iteration_stages", "list", [], "stages run every turn"),
    field("finalization_stages", "list", [], "stages run once the turns are done (e.g. lm/judge)"),
    field("seed_datastore", "mapping", None, "`data_path` of the seed conversations (lm/scenario learns from them)"),
    field("prompts", "mapping", {}, "replacements for templates of chitchat_gen/prompts.py, by name"),
    field("license", "str", None, "the dataset's license for the card's Hub metadata, a Hub license id such as "
          "cc-by-4.0, apache-2.0 or mit; null: none chosen, the card asks you to choose", flag="--license"),
    field("language", "str", "en", "the conversations' language for the card's Hub metadata, an ISO 639-1 code"),
    field("quality", "mapping", {}, "the quality gates: turn one off, add phrases, set thresholds (keys below)"),
]

ENGINE_TYPES = ("ollama", "openai", "local")
ENGINE_FIELDS = [
    field("type", "|".join(ENGINE_TYPES), "ollama", "which engine speaks to the model", flag="--engine"),
    field("model", "str", None, "model name (ollama, openai) or .gguf path (local); null: the engine's default",
          flag="--model"),
    field("base_url", "urls", None, "server URL or list of URLs (flag: repeat it or comma-separate); null: the engine's default",
          flag="--base-url"),
    # No flag: a key typed on a command line stays in the shell's history.
    field("api_key", "str", None, "openai only; OPENAI_API_KEY wins when set (and is better: a key here draws a warning)",
          override="api_key", secret=True),
    field("temperature", "number", 0.7, "sampling temperature", low=0, flag="--temperature"),
    field("max_tokens", "int", None, "cap on every reply; null: 512 (local: 200)", low=1, flag="--max-tokens"),
    field("json_max_tokens", "int", 200, "cap on JSON replies (the flow controller's)", low=1),
    field("n_ctx", "int", 4096, "local only: the model's context window", low=256),
    field("timeout", "number", 120, "seconds an LM request may take before it counts as timed out (retried; "
          "a run whose every request times out for two of these stops)", above=0, flag="--timeout"),
    field("retries", "int", 4, "extra attempts for a failure that may pass (connection reset, timeout, 408, 500, "
          "502, 504, a 200 without text), twice as many while the server answers other calls; 429/503/529 "
          "are waited out instead (max_wait)", low=0),
    field("concurrency", "int", None, "conversations in flight; null: 4 per Ollama server, 32 per OpenAI-style, 4 local",
          low=1, flag="--concurrency"),
    field("max_rpm", "number", None, "requests per minute per endpoint, paced (a rate limit you know); null: none",
          above=0, flag="--max-rpm"),
    field("max_tpm", "number", None, "tokens per minute per endpoint, paced (prompt estimate + max_tokens, "
          "corrected by each reply's usage); null: none", above=0, flag="--max-tpm"),
    field("max_wait", "number", 600, "seconds one call may wait in all on backpressure (429/503, pacing) "
          "before it counts as failed", above=0),
    field("price_in", "number", None, "USD per million prompt tokens, for the cost line of the summary, run log "
          "and card; null: tokens only", low=0, flag="--price-in"),
    field("price_cached", "number", None, "USD per million prompt tokens served from the server's prefix cache; "
          "null: price_in", low=0, flag="--price-cached"),
    field("price_out", "number", None, "USD per million completion tokens; null: tokens only", low=0, flag="--price-out"),
]
DEFAULT_MODELS = {"ollama": "granite4:3b", "openai": None, "local": None}
DEFAULT_MAX_TOKENS = {"ollama": 512, "openai": 512, "local": 200}  # a 135M model mostly loops past 200
DEFAULT_BASE_URLS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000", "local": None}

DATA_STORE_FIELDS = [
    field("type", "str", "default", "DiGiT's store type; only `default` (a JSONL file) exists here"),
    field("data_path", "str", REQUIRED, "the JSONL file; relative to the task file's folder, ${VAR}s expand"),
]

# The settings of each stage of the package besides `name` (extra_stages.py adds its own rows); a
# stage without a row is a user's, and takes any keys.
STAGE_FIELDS = {
    "lm/scenario": [
        field("num_icl_examples", "int", 2, "example scenarios shown in the prompt", low=0),
        field("near_duplicate_threshold", "number", None,
              "retry once, then drop, a scenario this close (3-gram Jaccard) to an earlier one", above=0, high=1)],
    "sample/persona": [field("persona_store", "mapping", REQUIRED, "`data_path` of personas.jsonl")],
    "lm/flow_controller": [
        field("patterns", "list", REQUIRED, "the moves (keys below)"),
        field("termination_patterns", "list", [], "names of the patterns that end a conversation"),
        field("judge_eligibility", "bool", None, "false: skip the \"which moves fit?\" call; picks follow the weights; "
              "null: false for the local engine (measured in docs/quality.md), else true"),
        field("generate_hint", "bool", None, "false: pass the pattern's hint as is, one call less per turn; "
              "null: as judge_eligibility")],
    "lm/user/guided": [field("max_tokens", "int", None, "cap on user messages; null: 160 or the engine's cap if lower", low=1),
                       field("closing_cues", "list", [], "phrases that also count as thanks or goodbye on the closing turn; "
                             "the same as `quality.phrases.closing_cues`"),
                       field("closing_attempts", "int", 6, "times the closing message is asked for before the conversation "
                             "drops (each a short call); other messages get 2", low=1)],
    "lm/assistant/naive": [field("max_tokens", "int", None, "cap on assistant replies; null: the engine's cap", low=1)],
}
PATTERN_FIELDS = [
    field("name", "str", REQUIRED, "unique name, e.g. chit_chat/follow_up"),
    field("description", "str", None, "what the move is, shown to the eligibility call; null: the hint"),
    field("hint", "str", REQUIRED, "the instruction passed to the user stage"),
    field("weight", "number", 1.0, "relative chance of being picked among the eligible moves", low=0),
]

# Keys of DiGiT's task files that mean nothing here; accepted (and noted) so its files run unchanged.
IGNORED_KEYS = {"created_by", "data_builder", "formatter", "runner_config", "seed_batch_size",
                "machine_batch_size", "generator"}
# DiGiT lets its flow controller carry its own max_turns; here the task's max_turns alone bounds a conversation.
IGNORED_STAGE_KEYS = (IGNORED_KEYS - {"generator"}) | {"max_turns"}
ENGINE_NAME = re.compile(r"[A-Za-z_][\w.-]*")
BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
# The settings a flag or a keyword of load_task overrides, by that keyword (cli.py makes its flags from these).
TASK_OVERRIDES = {spec["override"]: spec for spec in TASK_FIELDS if spec["override"]}
ENGINE_OVERRIDES = {spec["override"]: spec for spec in ENGINE_FIELDS if spec["override"]}


def load_task(path: str | os.PathLike = "task.yaml", **overrides) -> dict:
    """The task file read, checked and resolved into a plain dict, with its data files loaded.

    `overrides` are the flags' settings by keyword (TASK_OVERRIDES, ENGINE_OVERRIDES: engine,
    base_url, max_rpm, seed, ...; None leaves the file's value) for the default engine, and
    `engines={"strong": {"base_url": ...}}` for a named one (the flag `--engine-set`).
    """
    overrides = dict(overrides)
    named = overrides.pop("engines", None) or {}  # {name: {key: value}}: a named engine pointed elsewhere
    for key in overrides:
        if key not in TASK_OVERRIDES and key not in ENGINE_OVERRIDES:
            known = [*TASK_OVERRIDES, *ENGINE_OVERRIDES]
            raise ConfigError(f"unknown override '{key}'{did_you_mean(key, known)}; known: {', '.join(known)}")
    path = Path(path)
    raw = _read_yaml(path)
    notes: list[str] = []
    task = check_fields(raw, TASK_FIELDS, f"{path}: ", notes, IGNORED_KEYS)
    name = task["task_name"]
    if not name.strip() or ".." in Path(name).parts or Path(name).is_absolute():
        raise ConfigError(f"{path}: task_name: expected a relative name like public/examples/chit_chat, got {name!r}")
    if task["min_turns"] > task["max_turns"]:
        raise ConfigError(f"{path}: min_turns ({task['min_turns']}) is greater than max_turns ({task['max_turns']}): "
                          "lower min_turns or raise max_turns")
    for template, text in task["prompts"].items():
        if template not in prompts.TEMPLATES:
            raise ConfigError(f"{path}: prompts.{template}: unknown prompt{did_you_mean(template, prompts.TEMPLATES)}; "
                              f"known: {', '.join(prompts.TEMPLATES)}")
        if problem := prompts.check_override(template, text):
            raise ConfigError(f"{path}: prompts.{template}: {problem}")
    if task["seed_datastore"] is not None:
        store = check_fields(task["seed_datastore"], DATA_STORE_FIELDS, f"{path}: seed_datastore.", notes)
        task["seed_path"] = _data_path(store["data_path"], path, "seed_datastore.data_path")
    task.update(path=str(path), notes=notes, personas=[],
                seed_scenarios=load_seed_scenarios(task["seed_path"]) if "seed_path" in task else [],
                engine=_engine(task["engine"], overrides, path), engines=_engines(task["engines"], named, path))
    _override(task, TASK_OVERRIDES, overrides)
    for i, entry in enumerate(task["stage_modules"]):
        _import_stages(entry, f"stage_modules[{i}]", path)
    for key in ("initialization_stages", "iteration_stages", "finalization_stages"):
        task[key] = [_stage(stage, f"{key}[{i}]", task, path, notes) for i, stage in enumerate(task[key])]
    if any(s["name"] == "lm/scenario" for s in task["initialization_stages"]) and not task["seed_scenarios"]:
        raise ConfigError(f"{path}: seed_datastore: lm/scenario learns from seed examples: "
                          "set seed_datastore.data_path to a seed_examples.jsonl file")
    return task


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"task file {path} is a directory: pass the task file inside it, e.g. {path / 'task.yaml'}")
    if not path.is_file():
        raise ConfigError(f"task file {path} not found: pass an existing file with --task-paths")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): save the file as UTF-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        from .yaml_errors import yaml_problem  # only a broken file pays for reading it again
        raise ConfigError(yaml_problem(path, text, exc))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (task_name, max_turns, ...) at top level")
    return raw


# --- the checker --------------------------------------------------------------------------

def check_fields(raw, fields: list[dict], prefix: str, notes: list, ignored=frozenset()) -> dict:
    """`raw` checked against `fields` (its place in messages: `prefix`, "task.yaml: engine."): defaults
    filled in, unknown keys refused with a hint, `ignored` ones noted."""
    where = prefix.rstrip(": .")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(f['name'] for f in fields)}")
    known = {f["name"] for f in fields}
    for key in raw:
        if key in ignored:
            notes.append(f"{prefix}{key}: DiGiT setting, ignored here")
        elif key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, known)}; known keys: {', '.join(sorted(known))}")
    return {f["name"]: check_value(raw.get(f["name"]), f, f"{prefix}{f['name']}") for f in fields}


def check_value(value, spec: dict, at: str):
    """`value` if it fits `spec` (None: the default), else a ConfigError at `at`."""
    if value is None:
        if spec["default"] is REQUIRED:
            raise ConfigError(f"{at}: missing: add '{spec['name']}: ...' ({spec['doc']})")
        return spec["default"]
    problem = value_problem(value, spec)
    if problem:
        raise ConfigError(f"{at}: {problem}")
    return float(value) if spec["kind"] == "number" else value


def value_problem(value, spec: dict) -> str | None:
    """Why `value` does not fit `spec` ("expected a whole number >= 1, got 0"), or None."""
    kind, low, high, above = spec["kind"], spec["low"], spec["high"], spec["above"]
    # subtle: bool is a subclass of int in Python, so `max_turns: true` must be refused by hand.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {"int": number and isinstance(value, int), "number": number, "bool": isinstance(value, bool),
            "str": isinstance(value, str), "mapping": isinstance(value, dict), "list": isinstance(value, list),
            "urls": isinstance(value, (str, list))}.get(kind, value in kind.split("|"))
    if fits and number:
        fits = (low is None or value >= low) and (high is None or value <= high) and (above is None or value > above)
    if fits and kind == "urls":
        return next(filter(None, map(url_problem, split_urls(value))), None)
    if fits:
        return None
    choices = kind.split("|")
    if len(choices) > 1:
        return f"expected one of {', '.join(choices)}, got {value!r}{did_you_mean(value, choices)}"
    return f"expected {describe(spec)}, got {MASK if spec['secret'] else repr(value)}"


def describe(spec: dict) -> str:
    """The kind and bounds in words: "a whole number >= 1", "a number in (0, 1] or null"."""
    kind, low, high, above = spec["kind"], spec["low"], spec["high"], spec["above"]
    text = {"int": "a whole number", "number": "a number", "bool": "true or false", "str": "a string",
            "mapping": "a mapping", "list": "a list", "urls": "a URL or a list of URLs"}.get(kind, "one of " + kind.replace("|", ", "))
    if (low is not None or above is not None) and high is not None:
        text += f" in {'[' if above is None else '('}{low if above is None else above}, {high}]"
    elif low is not None or above is not None:
        text += f" >= {low}" if above is None else f" > {above}"
    return text + (" or null" if spec["default"] is None else "")


def closest(word, choices) -> str | None:
    """The choice `word` is most likely a misspelling of (difflib), or None: for keys, stages, flags."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word, choices) -> str:
    close = closest(word, choices)
    return f" (did you mean '{close}'?)" if close else ""


# --- sections -----------------------------------------------------------------------------

def _engines(raw: dict, named: dict, path) -> dict:
    """The named engines, each checked and resolved as `engine:` is; `named` sets keys of some."""
    for name in named:
        if name not in raw:
            raise ConfigError(f"engine-set: no engine '{name}' in {path}{did_you_mean(name, raw)}; "
                              f"its engines: {', '.join([DEFAULT_ENGINE, *raw]) or 'none'}")
    engines = {}
    for name, settings in raw.items():
        if not isinstance(name, str) or not ENGINE_NAME.fullmatch(name) or name in (DEFAULT_ENGINE, "generator"):
            raise ConfigError(f"{path}: engines.{name}: expected a name of letters, digits, _ . - "
                              f"(not '{DEFAULT_ENGINE}' or 'generator', the names of `engine:`)")
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: engines.{name}: expected a mapping with the keys of `engine` (type, model, ...)")
        given = named.get(name, {})
        if given.get("type", settings.get("type")) != settings.get("type"):
            # as --engine does for the default: a switched engine starts from its type's defaults
            settings = {key: value for key, value in settings.items() if key not in ("model", "base_url", "max_tokens")}
        engines[name] = _engine({**settings, **given}, {}, path, f"engines.{name}")
    return engines


def _engine(raw: dict, overrides: dict, path, where: str = "engine") -> dict:
    engine = check_fields(raw, ENGINE_FIELDS, f"{path}: {where}.", [])
    type_flag = overrides.get("engine")
    if type_flag and type_flag != engine["type"]:
        # The task's model, URL and reply cap belong to its own engine type; a switched engine starts from its defaults.
        engine.update(model=None, base_url=None, max_tokens=None)
    _override(engine, ENGINE_OVERRIDES, overrides)
    kind = engine["type"]
    engine["model"] = engine["model"] or DEFAULT_MODELS[kind]
    engine["max_tokens"] = engine["max_tokens"] or DEFAULT_MAX_TOKENS[kind]
    urls = engine.pop("base_url") or DEFAULT_BASE_URLS[kind]
    if kind == "ollama" and urls == DEFAULT_BASE_URLS[kind] and os.environ.get("OLLAMA_HOST"):
        # The default URL (as the shipped task.yaml writes it) gives way to Ollama's own variable:
        # host, host:port or a URL.
        urls = os.environ["OLLAMA_HOST"]
        urls = urls if "://" in urls else "http://" + urls
        if not re.search(r":\d+/?$", urls):
            urls += ":11434"  # OLLAMA_HOST=0.0.0.0 means Ollama's own port, not http's 80
        if problem := url_problem(urls):
            raise ConfigError(f"OLLAMA_HOST: {problem}")
    engine["base_urls"] = split_urls(urls) if urls else []
    return engine


def _override(section: dict, specs: dict, overrides: dict) -> None:
    """Set the settings of `section` that `overrides` gives (not None), checked against their rows."""
    for key, spec in specs.items():
        if overrides.get(key) is not None:
            section[spec["name"]] = check_value(overrides[key], spec, f"{key} (override)")


def _stage(raw, where: str, task: dict, path, notes: list) -> dict:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{path}: {where}: expected a mapping with a 'name' key, got {raw!r}")
    name, raw = raw["name"], dict(raw)
    chosen = _stage_engine(raw, where, task, path)
    if name in MORE_STAGES and name not in STAGES:  # a stage_modules' own lm/judge stays the one that runs
        importlib.import_module(f".{MORE_STAGES[name]}", __package__)
    if name not in STAGES:
        known = [*STAGES, *(more for more in MORE_STAGES if more not in STAGES)]
        raise ConfigError(f"{path}: {where}.name: unknown stage '{name}'{did_you_mean(name, known)}; "
                          f"known stages: {', '.join(known)}; a stage of your own: list the Python file that "
                          "registers it (@stage) under stage_modules in the task file")
    if name not in STAGE_FIELDS:
        return dict(raw, where=where, engine=chosen)  # a user's own stage: its settings are its business
    settings = {key: value for key, value in raw.items() if key != "name"}
    stage = check_fields(settings, STAGE_FIELDS[name], f"{path}: {where}.", notes, IGNORED_STAGE_KEYS)
    stage.update(name=name, where=where, engine=chosen)
    if name == "sample/persona":
        store = check_fields(stage["persona_store"], DATA_STORE_FIELDS, f"{path}: {where}.persona_store.", notes)
        task["personas"] = load_personas(_data_path(store["data_path"], path, f"{where}.persona_store.data_path"))
    elif name == "lm/flow_controller":
        _flow_controller(stage, f"{path}: {where}.", notes)
        if not stage["termination_patterns"] and task["close_at_max_turns"]:
            raise ConfigError(f"{path}: {where}.termination_patterns: none, so no conversation would get a closing "
                              "turn although close_at_max_turns is true: name the closing pattern here (the shipped "
                              "task's is chit_chat/termination), or set close_at_max_turns: false to let "
                              "conversations stop after max_turns without one")
        for switch in ("judge_eligibility", "generate_hint"):
            if stage[switch] is None:  # the tiny embedded model judges and writes hints badly: skip both
                stage[switch] = engine_of(task, stage)["type"] != "local"
    elif name == "lm/user/guided" and not all(isinstance(cue, str) and cue.strip() for cue in stage["closing_cues"]):
        raise ConfigError(f"{path}: {where}.closing_cues: expected a list of words or phrases, got {stage['closing_cues']!r}")
    if name in ("lm/user/guided", "lm/assistant/naive") and stage["max_tokens"] is None:
        # A chit-chat user writes a line or two; capping them keeps transcripts (and prompts) short.
        cap = engine_of(task, stage)["max_tokens"]
        stage["max_tokens"] = min(160, cap) if name == "lm/user/guided" else cap
    return stage


def _stage_engine(raw: dict, where: str, task: dict, path) -> str:
    """The engine a stage names, taken out of `raw`: `engine: NAME`, or DiGiT's `generator: NAME` or
    `blocks: {generator: NAME}` (its default block, `generator`, is the default engine)."""
    blocks = raw.pop("blocks", None)
    if blocks is not None and not isinstance(blocks, dict):
        raise ConfigError(f"{path}: {where}.blocks: expected a mapping like {{generator: NAME}}, got {blocks!r}")
    given = {key: value for key, value in (("engine", raw.pop("engine", None)), ("generator", raw.pop("generator", None)),
                                           ("blocks.generator", (blocks or {}).get("generator"))) if value is not None}
    known = [DEFAULT_ENGINE, *task["engines"]]
    chosen = set()
    for key, value in given.items():
        name = DEFAULT_ENGINE if value == "generator" and key != "engine" else value
        if name not in known:
            raise ConfigError(f"{path}: {where}.{key}: unknown engine {value!r}{did_you_mean(value, known)}; "
                              f"known engines: {', '.join(known)} (define one under `engines:`)")
        chosen.add(name)
    if len(chosen) > 1:
        raise ConfigError(f"{path}: {where}: {' and '.join(given)} name different engines: keep one")
    return chosen.pop() if chosen else DEFAULT_ENGINE


def _import_stages(entry, at: str, path) -> None:
    """Import one of the task's stage_modules: a .py file (found as data paths are) or a module name.

    subtle: the file is run without a place in sys.modules, so cloudpickle ships its stages to Ray
    workers by value (they cannot import a file that only the driver has).
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"{path}: {at}: expected a .py file or a module name, got {entry!r}")
    try:
        if entry.endswith(".py"):
            file = _data_path(entry, path, at)
            spec = importlib.util.spec_from_file_location(f"chitchat_gen_task_stages_{file.stem}", file)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            importlib.import_module(entry)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name != entry.split(".")[0] and not entry.startswith(f"{exc.name}."):
            raise ConfigError(f"{path}: {at}: {entry} imports {exc.name}, which is not installed: pip install it")
        raise ConfigError(f"{path}: {at}: no module {entry} on the Python path: give the .py file's path instead "
                          "(relative to the task file), or install the module")
    except Exception as exc:  # the user's code: where it failed, in one line
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise ConfigError(f"{path}: {at}: importing {entry} failed at {Path(frame.filename).name} line {frame.lineno} "
                          f"({type(exc).__name__}: {exc}): fix it there")


def _flow_controller(stage: dict, prefix: str, notes: list) -> None:
    if not stage["patterns"]:
        raise ConfigError(f"{prefix}patterns: expected a non-empty list of patterns (name, hint, weight)")
    patterns, names = [], set()
    for i, raw in enumerate(stage["patterns"]):
        pattern = check_fields(raw, PATTERN_FIELDS, f"{prefix}patterns[{i}].", notes)
        if pattern["name"] in names:
            raise ConfigError(f"{prefix}patterns[{i}].name: pattern '{pattern['name']}' appears twice: names must be unique")
        if not pattern["hint"].strip():
            raise ConfigError(f"{prefix}patterns[{i}].hint: pattern '{pattern['name']}' needs a hint "
                              "(the instruction passed to the user stage)")
        names.add(pattern["name"])
        pattern["description"] = pattern["description"] or pattern["hint"]
        patterns.append(pattern)
    terminations = stage["termination_patterns"]
    for name in terminations:
        if name not in names:
            raise ConfigError(f"{prefix}termination_patterns: '{name}' is not one of the patterns"
                              f"{did_you_mean(name, names)}: add a pattern with that name")
    if not any(p["weight"] > 0 and p["name"] not in terminations for p in patterns):
        raise ConfigError(f"{prefix}patterns: at least one non-termination pattern needs a weight > 0")
    stage["patterns"] = patterns


def _data_path(value: str, path, at: str) -> Path:
    def expand(match):
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{path}: {at}: environment variable ${{{name}}} is not set: export {name}=... or write the path out")
        return os.environ[name]
    resolved = Path(re.sub(r"\$\{(\w+)\}", expand, value)).expanduser()
    if not resolved.is_absolute():
        resolved = Path(path).resolve().parent / resolved
    if not resolved.is_file():
        raise ConfigError(f"{path}: {at}: file {resolved} not found: fix the path (relative paths start at the task file's folder)")
    return resolved


# --- data files ---------------------------------------------------------------------------

def _objects(path: Path):
    """(line number, object) for each non-blank line; a line that is not a JSON object is a ConfigError."""
    for number, _, value, problem in read_jsonl(path):
        if problem:
            fix = "save the file as UTF-8" if "UTF-8" in problem else "one JSON object per line"
            raise ConfigError(f"{path} line {number}: {problem}: {fix}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path} line {number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


PERSONA_TEXT_FIELDS = [field(key, "str", None, "") for key in ("expertise", "domain", "style_override")]
TRAIT_FIELD = field("trait", "number", None, "", low=-1, high=1)


def load_personas(path: Path) -> list[dict]:
    """Personas with every field present: `role` required, the rest defaulted when missing or null."""
    personas = []
    for number, raw in _objects(path):
        at = f"{path} line {number}: "
        role = raw.get("role")
        if not isinstance(role, str) or not role.strip():
            raise ConfigError(f"{at}role: every persona needs a non-empty 'role' string")
        persona = {"role": role.strip()}
        for spec in PERSONA_TEXT_FIELDS:
            value = check_value(raw.get(spec["name"]), spec, at + spec["name"])
            persona[spec["name"]] = value.strip() if value and value.strip() else None
        goals = raw.get("goals") or []
        goals = [goals] if isinstance(goals, str) else goals
        if not isinstance(goals, list) or not all(isinstance(g, str) for g in goals):
            raise ConfigError(f"{at}goals: expected a list of strings, got {goals!r}")
        personality = raw.get("personality") or {}
        if not isinstance(personality, dict):
            raise ConfigError(f"{at}personality: expected an object like {{\"openness\": 0.5}}, got {personality!r}")
        for trait, value in personality.items():
            if trait not in BIG_FIVE:
                raise ConfigError(f"{at}personality.{trait}: unknown trait{did_you_mean(trait, BIG_FIVE)}; known: {', '.join(BIG_FIVE)}")
            check_value(value, TRAIT_FIELD, f"{at}personality.{trait}")
        persona.update(goals=goals, personality={t: float(personality.get(t) or 0.0) for t in BIG_FIVE})
        personas.append(persona)
    if not personas:
        raise ConfigError(f"{path}: no personas: add one JSON object per line with at least a 'role'")
    return personas


def load_seed_scenarios(path: Path) -> list[str]:
    """The scenario sentences of the seed conversations (what lm/scenario learns from).

    Each seed is checked for the shape of a complete conversation record, ours or DiGiT's.
    """
    scenarios = []
    for number, record in _objects(path):
        at = f"{path} line {number}"
        steps = record.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"{at}: steps: expected a non-empty list of steps (scenario, persona, flow_controller, user, assistant)")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("role") not in STEP_ROLES:
                got = step.get("role") if isinstance(step, dict) else step
                raise ConfigError(f"{at}: steps[{i}].role: expected one of {', '.join(STEP_ROLES)}, got {got!r}")
            if not isinstance(step.get("content"), str):
                raise ConfigError(f"{at}: steps[{i}].content: expected a string")
        roles = [s["role"] for s in steps]
        scenario = next((s["content"].strip() for s in steps if s["role"] == "scenario"), "")
        if not scenario:
            raise ConfigError(f"{at}: no scenario step: each seed needs a step with role 'scenario' and its sentence")
        if "user" not in roles or "assistant" not in roles:
            raise ConfigError(f"{at}: a seed needs at least one user and one assistant step")
        scenarios.append(scenario)
    if not scenarios:
        raise ConfigError(f"{path}: no seed examples: add one conversation record per line")
    return scenarios
