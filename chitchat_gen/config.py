"""Load and validate a task: task.yaml, its personas and its seed conversations.

Configuration flows defaults -> task.yaml -> overrides (the CLI flags). Every problem a user
can fix is a `ConfigError` whose message names the file, the field or line, and the fix; the
CLI prints it as one `Error: ...` line. Nothing here talks to an LM.

    >>> task = load_task("task.yaml", engine="local", seed=7)
    >>> task["engine"]["type"], len(task["personas"]) > 0
    ('local', True)
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

import yaml


class ConfigError(Exception):
    """A problem the user fixes in a file or a flag; printed as one `Error:` line."""


ENGINE_TYPES = ("ollama", "openai", "local")
DEFAULT_MODELS = {"ollama": "granite4:3b", "openai": None, "local": None}
DEFAULT_MAX_TOKENS = {"ollama": 512, "openai": 512, "local": 200}  # a 135M model mostly loops past 200
DEFAULT_BASE_URLS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000", "local": None}

DEFAULT_ENGINE = {
    "type": "ollama",
    "model": None,            # None: the engine type's default (DEFAULT_MODELS; openai: the first served model)
    "base_url": None,         # a URL or a list of URLs; None: the engine type's default
    "api_key": None,          # openai only; OPENAI_API_KEY wins when set
    "temperature": 0.7,
    "max_tokens": None,       # cap on every reply (None: DEFAULT_MAX_TOKENS); JSON replies get `json_max_tokens`
    "json_max_tokens": 200,
    "n_ctx": 4096,            # local only: the model's context window
    "timeout": 120,           # seconds per HTTP request
    "retries": 4,             # extra attempts for a transient failure (connection, timeout, 429, 5xx)
    "concurrency": None,      # None: sized from the engine (see engines.default_concurrency)
}

# Keys of DiGiT's task files that mean nothing here; accepted so its files run unchanged.
IGNORED_KEYS = {"created_by", "data_builder", "formatter", "runner_config", "seed_batch_size",
                "machine_batch_size", "generator"}

TASK_KEYS = {"task_name", "task_description", "max_turns", "min_turns", "close_at_max_turns",
             "seed", "engine", "initialization_stages", "iteration_stages", "seed_datastore",
             "prompts"}

# Keys each built-in stage accepts besides `name`; a custom stage accepts any keys.
STAGE_KEYS = {
    "lm/scenario": {"num_icl_examples", "near_duplicate_threshold"},
    "sample/persona": {"persona_store"},
    "lm/flow_controller": {"patterns", "termination_patterns", "generate_hint", "judge_eligibility", "max_turns"},
    "lm/user/guided": {"max_tokens"},
    "lm/assistant/naive": {"max_tokens"},
}

PERSONA_FIELDS = ("role", "expertise", "domain", "goals", "personality", "style_override")
BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
STEP_ROLES = ("scenario", "persona", "flow_controller", "user", "assistant")


def load_task(path: str | os.PathLike = "task.yaml", **overrides) -> dict:
    """Read, validate and resolve a task file; `overrides` are CLI-level settings.

    Overrides: engine (type), model, base_url (str or list), temperature, max_tokens,
    concurrency, seed, api_key. Returns a plain dict with the data files loaded:
    `personas` (list of dicts) and `seed_scenarios` (list of str) beside the YAML keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task file {path} not found: pass an existing file with --task-paths")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}): fix the syntax")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (task_name, max_turns, ...) at top level")

    notes = []
    _check_keys(raw, TASK_KEYS, IGNORED_KEYS, str(path), notes)
    task_name = _get(raw, "task_name", str, path)
    if not task_name.strip() or ".." in Path(task_name).parts or task_name.startswith("/"):
        raise ConfigError(f"{path}: task_name: expected a relative name like public/examples/chit_chat")
    task = {
        "path": str(path),
        "task_name": task_name,
        "task_description": raw.get("task_description") or "",
        "max_turns": _get(raw, "max_turns", int, path, default=4),
        "min_turns": _get(raw, "min_turns", int, path, default=1),
        "close_at_max_turns": _get(raw, "close_at_max_turns", bool, path, default=True),
        "seed": _get(raw, "seed", int, path, default=None),
        "prompts": _get(raw, "prompts", dict, path, default={}),
        "notes": notes,
    }
    if task["min_turns"] < 1 or task["max_turns"] < 1:
        raise ConfigError(f"{path}: min_turns and max_turns must be >= 1 (got {task['min_turns']}, {task['max_turns']})")
    if task["min_turns"] > task["max_turns"]:
        raise ConfigError(f"{path}: min_turns ({task['min_turns']}) is greater than max_turns ({task['max_turns']}): lower min_turns or raise max_turns")
    from . import prompts  # late: prompts is data, config only checks the names
    for name, text in task["prompts"].items():
        if name not in prompts.TEMPLATES:
            raise ConfigError(f"{path}: prompts.{name}: unknown prompt{_did_you_mean(name, prompts.TEMPLATES)}; known: {', '.join(prompts.TEMPLATES)}")
        problem = prompts.check_override(name, text)
        if problem:
            raise ConfigError(f"{path}: prompts.{name}: {problem}")

    base = path.resolve().parent
    task["initialization_stages"] = _stages(raw, "initialization_stages", path, notes)
    task["iteration_stages"] = _stages(raw, "iteration_stages", path, notes)
    task["engine"] = _engine(raw.get("engine"), overrides, path)
    if overrides.get("seed") is not None:
        task["seed"] = overrides["seed"]

    task["personas"] = []
    for stage in task["initialization_stages"] + task["iteration_stages"]:
        field = f"{stage['where']}"
        if stage["name"] == "sample/persona":
            store = stage.get("persona_store") or {}
            if not isinstance(store, dict) or "data_path" not in store:
                raise ConfigError(f"{path}: {field}.persona_store.data_path: expected the path of a personas.jsonl file")
            stage["data_path"] = _data_path(store["data_path"], base, path, f"{field}.persona_store.data_path")
            task["personas"] = load_personas(stage["data_path"])
        elif stage["name"] == "lm/flow_controller":
            _flow_controller(stage, path, notes)
        elif stage["name"] in ("lm/user/guided", "lm/assistant/naive"):
            # A chit-chat user writes a line or two; capping them keeps transcripts (and prompts) short.
            default = task["engine"]["max_tokens"]
            cap = stage.setdefault("max_tokens", min(160, default) if stage["name"] == "lm/user/guided" else default)
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigError(f"{path}: {field}.max_tokens: expected a whole number >= 1, got {cap!r}")
        elif stage["name"] == "lm/scenario":
            n = stage.setdefault("num_icl_examples", 2)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ConfigError(f"{path}: {field}.num_icl_examples: expected a whole number >= 0, got {n!r}")
            threshold = stage.setdefault("near_duplicate_threshold", None)
            if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                          or not 0 < threshold <= 1):
                raise ConfigError(f"{path}: {field}.near_duplicate_threshold: expected a number in (0, 1] or null, got {threshold!r}")

    datastore = raw.get("seed_datastore")
    task["seed_scenarios"] = []
    if datastore is not None:
        if not isinstance(datastore, dict) or "data_path" not in datastore:
            raise ConfigError(f"{path}: seed_datastore.data_path: expected the path of a seed_examples.jsonl file")
        task["seed_path"] = _data_path(datastore["data_path"], base, path, "seed_datastore.data_path")
        task["seed_scenarios"] = load_seed_scenarios(task["seed_path"])
    if any(s["name"] == "lm/scenario" for s in task["initialization_stages"]) and not task["seed_scenarios"]:
        raise ConfigError(f"{path}: seed_datastore: lm/scenario learns from seed examples: set seed_datastore.data_path to a seed_examples.jsonl file")
    return task


def _check_keys(mapping: dict, known: set, ignored: set, where: str, notes: list) -> None:
    for key in mapping:
        if key in ignored:
            notes.append(f"{where}: {key}: DiGiT setting, ignored here")
        elif key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{_did_you_mean(key, known)}; known keys: {', '.join(sorted(known))}")


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _get(raw: dict, key: str, kind: type, path, default=...):
    if key not in raw or raw[key] is None:
        if default is ...:
            raise ConfigError(f"{path}: {key}: missing: add '{key}: ...' to the task file")
        return default
    value = raw[key]
    # subtle: bool is a subclass of int in Python, so `max_turns: true` must be refused by hand.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _stages(raw: dict, key: str, path, notes: list) -> list[dict]:
    from .stages import STAGES  # late: the registry may have grown with the user's own stages
    stages = raw.get(key) or []
    if not isinstance(stages, list):
        raise ConfigError(f"{path}: {key}: expected a list of stages (- name: lm/scenario ...)")
    resolved = []
    for i, stage in enumerate(stages):
        where = f"{key}[{i}]"
        if isinstance(stage, str):
            stage = {"name": stage}
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ConfigError(f"{path}: {where}: expected a mapping with a 'name' key")
        name = stage["name"]
        if name not in STAGES:
            raise ConfigError(f"{path}: {where}.name: unknown stage '{name}'{_did_you_mean(name, STAGES)}; known stages: {', '.join(STAGES)}")
        if name in STAGE_KEYS:
            extra = dict(stage)
            del extra["name"]
            _check_keys(extra, STAGE_KEYS[name], IGNORED_KEYS, f"{path}: {where}", notes)
        resolved.append(dict(stage, where=where))
    return resolved


def _flow_controller(stage: dict, path, notes: list) -> None:
    where = stage["where"]
    if "max_turns" in stage:
        # DiGiT lets the stage carry its own max_turns; here the task's max_turns alone bounds a conversation.
        notes.append(f"{path}: {where}.max_turns: DiGiT setting, ignored here (the task's max_turns applies)")
        stage.pop("max_turns")
    patterns = stage.get("patterns")
    if not isinstance(patterns, list) or not patterns:
        raise ConfigError(f"{path}: {where}.patterns: expected a non-empty list of patterns (name, hint, weight)")
    names = set()
    for i, pattern in enumerate(patterns):
        at = f"{where}.patterns[{i}]"
        if not isinstance(pattern, dict):
            raise ConfigError(f"{path}: {at}: expected a mapping with name, description, hint, weight")
        _check_keys(pattern, {"name", "description", "hint", "weight"}, set(), f"{path}: {at}", [])
        name = pattern.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: {at}.name: expected a non-empty string")
        if name in names:
            raise ConfigError(f"{path}: {at}.name: pattern '{name}' appears twice: names must be unique")
        names.add(name)
        if not isinstance(pattern.get("hint"), str) or not pattern["hint"].strip():
            raise ConfigError(f"{path}: {at}.hint: pattern '{name}' needs a hint (the instruction passed to the user stage)")
        weight = pattern.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{path}: {at}.weight: expected a number >= 0, got {weight!r}")
        pattern["weight"] = float(weight)
        pattern.setdefault("description", pattern["hint"])
    terminations = stage.get("termination_patterns") or []
    if isinstance(terminations, str):
        terminations = [terminations]
    if not isinstance(terminations, list):
        raise ConfigError(f"{path}: {where}.termination_patterns: expected a list of pattern names")
    for name in terminations:
        if name not in names:
            raise ConfigError(f"{path}: {where}.termination_patterns: '{name}' is not one of the patterns{_did_you_mean(name, names)}: add a pattern with that name")
    stage["termination_patterns"] = terminations
    if not any(p["weight"] > 0 and p["name"] not in terminations for p in patterns):
        raise ConfigError(f"{path}: {where}.patterns: at least one non-termination pattern needs a weight > 0")
    for switch in ("generate_hint", "judge_eligibility"):
        value = stage.setdefault(switch, True)
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {where}.{switch}: expected true or false, got {value!r}")


def _engine(raw, overrides: dict, path) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: engine: expected a mapping (type, model, base_url, ...)")
    _check_keys(raw, set(DEFAULT_ENGINE), set(), f"{path}: engine", [])
    engine = dict(DEFAULT_ENGINE, **raw)
    type_flag = overrides.get("engine")
    if type_flag and type_flag != engine["type"]:
        # The task's model, URL and reply cap belong to its own engine type; a switched engine starts from its defaults.
        engine.update(type=type_flag, model=None, base_url=None, max_tokens=None)
    for key in ("model", "base_url", "temperature", "max_tokens", "concurrency", "api_key"):
        if overrides.get(key) is not None:
            engine[key] = overrides[key]
    where = f"{path}: engine"
    if engine["type"] not in ENGINE_TYPES:
        raise ConfigError(f"{where}.type: unknown engine '{engine['type']}'{_did_you_mean(engine['type'], ENGINE_TYPES)}; known: {', '.join(ENGINE_TYPES)}")
    if engine["model"] is None:
        engine["model"] = DEFAULT_MODELS[engine["type"]]
    if engine["max_tokens"] is None:
        engine["max_tokens"] = DEFAULT_MAX_TOKENS[engine["type"]]
    urls = engine["base_url"] or DEFAULT_BASE_URLS[engine["type"]]
    if engine["type"] == "ollama" and not engine["base_url"] and os.environ.get("OLLAMA_HOST"):
        urls = os.environ["OLLAMA_HOST"]
        if not re.search(r":\d+/?$", urls):
            urls += ":11434"  # OLLAMA_HOST=0.0.0.0 means Ollama's own port, not http's 80
    engine["base_urls"] = [] if urls is None else _urls(urls, where)
    del engine["base_url"]
    for key, low in (("temperature", 0), ("max_tokens", 1), ("json_max_tokens", 1), ("timeout", 0.001), ("retries", 0), ("n_ctx", 256)):
        value = engine[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"{where}.{key}: expected a number >= {low}, got {value!r}")
    if engine["concurrency"] is not None and (not isinstance(engine["concurrency"], int) or engine["concurrency"] < 1):
        raise ConfigError(f"{where}.concurrency: expected a whole number >= 1, got {engine['concurrency']!r}")
    return engine


def _urls(urls, where: str) -> list[str]:
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list):
        raise ConfigError(f"{where}.base_url: expected a URL or a list of URLs")
    result = []
    for url in urls:
        for part in str(url).split(","):
            part = part.strip().rstrip("/")
            if not part:
                continue
            if not re.match(r"^[a-z]+://", part):
                part = "http://" + part  # OLLAMA_HOST is often host:port
            if not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", part):
                raise ConfigError(f"{where}.base_url: '{part}' is not a URL: expected e.g. http://localhost:11434")
            result.append(part)
    if not result:
        raise ConfigError(f"{where}.base_url: empty: give a URL such as http://localhost:11434")
    return result


def _data_path(value, base: Path, path, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {field}: expected a file path")
    def expand(match):
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{path}: {field}: environment variable ${{{name}}} is not set: export {name}=... or write the path out")
        return os.environ[name]
    resolved = Path(re.sub(r"\$\{(\w+)\}", expand, value)).expanduser()
    if not resolved.is_absolute():
        resolved = base / resolved
    if not resolved.is_file():
        raise ConfigError(f"{path}: {field}: file {resolved} not found: fix the path (relative paths start at the task file's folder)")
    return resolved


def _jsonl(path: Path):
    """Yield (line_number, object) for each non-blank line; a bad line is a ConfigError."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{path} line {number}: not UTF-8 text: save the file as UTF-8")
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number}: not valid JSON ({exc.msg}): one JSON object per line")
            if not isinstance(value, dict):
                raise ConfigError(f"{path} line {number}: expected a JSON object, got {type(value).__name__}")
            yield number, value


def load_personas(path: Path) -> list[dict]:
    """Personas with every field present: `role` required, the rest defaulted when missing or null."""
    personas = []
    for number, raw in _jsonl(path):
        at = f"{path} line {number}"
        role = raw.get("role")
        if not isinstance(role, str) or not role.strip():
            raise ConfigError(f"{at}: role: every persona needs a non-empty 'role' string")
        persona = {"role": role.strip()}
        for key in ("expertise", "domain", "style_override"):
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{at}: {key}: expected a string or null, got {value!r}")
            persona[key] = value.strip() if value and value.strip() else None
        goals = raw.get("goals") or []
        if isinstance(goals, str):
            goals = [goals]
        if not isinstance(goals, list) or not all(isinstance(g, str) for g in goals):
            raise ConfigError(f"{at}: goals: expected a list of strings, got {goals!r}")
        persona["goals"] = goals
        personality = raw.get("personality") or {}
        if not isinstance(personality, dict):
            raise ConfigError(f"{at}: personality: expected an object like {{\"openness\": 0.5}}, got {personality!r}")
        for trait, value in personality.items():
            if trait not in BIG_FIVE:
                raise ConfigError(f"{at}: personality.{trait}: unknown trait{_did_you_mean(trait, BIG_FIVE)}; known: {', '.join(BIG_FIVE)}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1):
                raise ConfigError(f"{at}: personality.{trait}: expected a number in [-1, 1], got {value!r}")
        persona["personality"] = {t: float(personality.get(t) or 0.0) for t in BIG_FIVE}
        personas.append(persona)
    if not personas:
        raise ConfigError(f"{path}: no personas: add one JSON object per line with at least a 'role'")
    return personas


def load_seed_scenarios(path: Path) -> list[str]:
    """The scenario sentences of the seed conversations (what lm/scenario learns from).

    Each seed is checked for the shape of a complete conversation record, ours or DiGiT's.
    """
    scenarios = []
    for number, record in _jsonl(path):
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
        scenario = [s["content"].strip() for s in steps if s["role"] == "scenario"]
        if not scenario or not scenario[0]:
            raise ConfigError(f"{at}: no scenario step: each seed needs a step with role 'scenario' and its sentence")
        if "user" not in roles or "assistant" not in roles:
            raise ConfigError(f"{at}: a seed needs at least one user and one assistant step")
        scenarios.append(scenario[0])
    if not scenarios:
        raise ConfigError(f"{path}: no seed examples: add one conversation record per line")
    return scenarios


def render_persona(persona: dict) -> str:
    """One line describing a persona, as shown to the user stage and stored in the persona step.

    >>> render_persona({"role": "retired nurse", "expertise": None, "domain": "gardening",
    ...   "goals": ["grow tomatoes"], "personality": {"openness": 0.8}, "style_override": None})
    'Role: retired nurse. Domain: gardening. Goals: grow tomatoes. Personality: curious and imaginative.'
    """
    parts = [f"Role: {persona['role']}."]
    if persona.get("expertise"):
        parts.append(f"Expertise: {persona['expertise']}.")
    if persona.get("domain"):
        parts.append(f"Domain: {persona['domain']}.")
    if persona.get("goals"):
        parts.append(f"Goals: {'; '.join(persona['goals'])}.")
    traits = personality_traits(persona.get("personality") or {})
    if traits:
        parts.append(f"Personality: {', '.join(traits)}.")
    if persona.get("style_override"):
        parts.append(f"Style: {persona['style_override']}.")
    return " ".join(parts)


TRAIT_WORDS = {  # (low, high) for each Big-Five trait; |value| < 0.3 says nothing
    "openness": ("conventional and practical", "curious and imaginative"),
    "conscientiousness": ("relaxed and spontaneous", "organised and thorough"),
    "extraversion": ("reserved and quiet", "outgoing and talkative"),
    "agreeableness": ("blunt and sceptical", "warm and cooperative"),
    "neuroticism": ("calm and even-tempered", "anxious and easily worried"),
}


def personality_traits(personality: dict) -> list[str]:
    return [TRAIT_WORDS[t][value > 0] for t, value in personality.items()
            if t in TRAIT_WORDS and abs(value or 0) >= 0.3]
