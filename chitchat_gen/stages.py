"""The stages: plain functions `stage(record, ctx) -> record | str` in one registry.

A stage appends steps to the conversation record and returns it, or returns a string: the
reason to drop the conversation. `ctx` is per conversation and holds:

    task    the validated task (task.load_task)       stage   this stage's entry in the task
    chat    the LM of this stage's engine: chat(messages, json_schema=None, **options) -> str
    chats   every engine's chat by name ("default", and the task's `engines:`); the loop sets
            `chat` from it before each stage, by the stage's `engine`
    rng     the conversation's random.Random          turn    the turn number, from 1
    memory  shared across the run: {"scenarios": earlier scenarios}; a stage may keep more there
    review  optional hook(text, kind, **context) -> (text, fixes, problems): the quality gates
            (gates.py) plug in here; without it a reply is taken as written (`as_written`)
    trace   optional hook(event, **data) that trace mode prints (trace.py)

Adding a stage is one function and one decorator line:

    @stage("filter/short_users")
    def short_users(record, ctx):
        users = [m for m in messages(record) if m["role"] == "user"]
        return "user message too short" if users and len(users[-1]["content"]) < 10 else record
"""

from __future__ import annotations

import json
import re

from . import prompts
from .record import last_step, messages, new_step

STAGES: dict = {}
# The package's stages beyond the design card's, by the module that registers them: task.py imports
# it when a task names one of them (your own stages come in through the task's `stage_modules`).
MORE_STAGES = {"lm/judge": "extra_stages", "filter/unique_first_user": "extra_stages"}
CLOSING_MAX_TOKENS = 64  # a goodbye of a sentence or two; a long cap lets a small model ramble past it


def stage(name: str):
    """Register a stage function under `name`, the name a task file uses."""
    def register(fn):
        STAGES[name] = fn
        return fn
    return register


# --- helpers shared by the stages ----------------------------------------------------------

DEFAULT_ENGINE = "default"  # the name of `engine:` among the task's engines; DiGiT's default block is "generator"


def engines_of(task: dict) -> dict:
    """Every engine of the task by name, the default (`engine:`) first as "default"."""
    return {DEFAULT_ENGINE: task["engine"], **task["engines"]}


def engine_of(task: dict, stage: dict) -> dict:
    """The engine settings a stage's calls go to: its `engine`, else the task's default.

    >>> engine_of({"engine": {"type": "ollama"}, "engines": {}}, {"name": "lm/user/guided"})["type"]
    'ollama'
    """
    return task["engines"].get(stage.get("engine"), task["engine"])


def lm(ctx: dict, messages: list[dict], json_schema: dict | None = None, **options) -> str:
    """One LM call with a seed drawn from the conversation's rng (reproducible, never repeated)."""
    options.setdefault("seed", ctx["rng"].randrange(2**31))
    reply = ctx["chat"](messages, json_schema=json_schema, **options)
    if ctx.get("trace"):
        ctx["trace"]("call", stage=ctx["stage"]["name"], engine=ctx["stage"].get("engine", DEFAULT_ENGINE),
                     messages=messages, reply=reply)
    return reply


def retry(ctx: dict, attempt: int) -> dict:
    """Options for asking again: a little warmer, since a model asked the same way tends to repeat its mistake."""
    return {"temperature": min(1.5, engine_of(ctx["task"], ctx["stage"])["temperature"] + 0.3)} if attempt else {}


def ask(record: dict, ctx: dict, prompt, kind: str, role: str, *, attempts: int, warmer: bool = True,
        max_tokens: int | None = None, **context) -> dict | str:
    """Ask for a `role` step until the review leaves no problem: the one ask-again-or-drop loop.

    `prompt(attempt)` gives the messages of each attempt; a retry is a little warmer unless
    `warmer` is false; `context` goes to review (what the reply must not copy or echo). Returns
    the record with the step added, or the drop reason: "user message: placeholder", "user
    message empty" ("scenario: ...", "scenario empty" for a scenario).
    """
    what = role if role == "scenario" else f"{role} message"
    options = {"max_tokens": max_tokens} if max_tokens is not None else {}
    for attempt in range(attempts):
        reply = lm(ctx, prompt(attempt), **options, **(retry(ctx, attempt) if warmer else {}))
        text, fixes, found = review(ctx, reply, kind, **context)
        if text and not found:
            return add_step(record, ctx, role, text, cleaned=fixes)
    return f"{what}: {found[0]}" if text else f"{what} empty"


def as_written(text: str, kind: str, **context) -> tuple[str, list, list]:
    """The review of a run without gates: the reply with its ends trimmed, nothing cleaned, no problem."""
    return text.strip(), [], []


def review(ctx: dict, text: str, kind: str, **context) -> tuple[str, list, list]:
    """What the run's review hook makes of one reply: (text cleaned, labels of what went, problems)."""
    return ctx.get("review", as_written)(text, kind, **context)


def template(ctx: dict, name: str, **variables) -> str:
    return prompts.render(name, ctx["task"]["prompts"], **variables)


def add_step(record: dict, ctx: dict, role: str, content: str, cleaned=(), **fields) -> dict:
    """Append a step written by the running stage in this turn; return the record.

    `cleaned` labels what the review removed from the reply (kept in the step's metadata).
    """
    step = new_step(role, content, ctx["stage"]["name"], ctx.get("turn"), **fields)
    if cleaned:
        step["metadata"]["cleaned"] = list(cleaned)
    record["steps"].append(step)
    return record


def scenario_of(record: dict, ctx: dict) -> str:
    step = last_step(record, "scenario")
    return step["content"] if step else ctx["task"]["task_description"] or "A casual conversation."


def persona_of(record: dict) -> str:
    step = last_step(record, "persona")
    return step["content"] if step else "An ordinary person chatting in their free time."


def user_side(record: dict, ctx: dict, system: str, name: str, **variables) -> list[dict]:
    """The messages of a call on the user's side: system text `system`, then template `name`.

    Every such call gets the scenario, the persona and the transcript, so the calls of one
    conversation open with the same text (prompts.USER_SIDE) and a prefix cache serves it.
    """
    shared = {"scenario": scenario_of(record, ctx), "persona": persona_of(record), "history": transcript(record),
              "moves": moves_of(ctx)}
    return [{"role": "system", "content": template(ctx, system, **shared)},
            {"role": "user", "content": template(ctx, name, **shared, **variables)}]


def instruction_of(ctx: dict, name: str, **variables) -> str:
    """Template `name` with the shared part left blank: the words a message must not parrot."""
    return template(ctx, name, scenario="", persona="", history="", moves="", **variables)


def moves_of(ctx: dict) -> str:
    """The task's moves for the user-side system text, when the flow controller judges which fit; else ''."""
    flow = next((s for s in ctx["task"]["iteration_stages"] if s["name"] == "lm/flow_controller"), None)
    if not flow or not flow["judge_eligibility"]:
        return ""
    return template(ctx, "MOVES", patterns=patterns_text([p for p in flow["patterns"] if p["weight"] > 0]))


def patterns_text(patterns: list[dict]) -> str:
    return "\n".join(f"- {p['name']}: {p['description']}" for p in patterns)


def transcript(record: dict) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages(record)]
    return "\n".join(lines) or "(nothing yet: this is the first message)"


# --- initialization stages -----------------------------------------------------------------

@stage("lm/scenario")
def scenario(record: dict, ctx: dict) -> dict | str:
    """In-context learning: show a few seed (and earlier) scenarios, ask for a different one.

    If a persona step came first (the shipped task samples the persona first), the scenario is
    written for that person; DiGiT's order, scenario first, writes it for anyone. The reply's
    first line is kept; one with a problem (the review: a copy of an example, not a scenario,
    with `near_duplicate_threshold` one that close to an earlier one) is retried once, then dropped.
    """
    rng, task, cfg = ctx["rng"], ctx["task"], ctx["stage"]
    remembered = ctx["memory"]["scenarios"]  # texts()/add(), shared by the run's threads (pipeline.Recent)
    pool = task["seed_scenarios"] + remembered.texts()
    examples = rng.sample(pool, min(cfg["num_icl_examples"], len(pool)))
    persona = last_step(record, "persona")

    def prompt(attempt: int) -> list[dict]:  # a retry draws another topic hint: the model repeated itself
        return [{"role": "system", "content": template(ctx, "SCENARIO_SYSTEM")},
                {"role": "user", "content": template(ctx, "SCENARIO_USER", examples="\n".join(f"- {e}" for e in examples),
                                                     topic_hint=rng.choice(prompts.TOPIC_HINTS),
                                                     person=person_of(persona))}]

    added = ask(record, ctx, prompt, "scenario", "scenario", attempts=2, warmer=False, earlier=remembered,
                seeds=task["seed_scenarios"], near_duplicate=cfg.get("near_duplicate_threshold"))
    if isinstance(added, dict):
        remembered.add(last_step(added, "scenario")["content"])
    return added


def person_of(persona: dict | None) -> str:
    """The scenario prompt's line on its persona, in words: a small model copies "Role: ..." fields
    as the scenario (docs/quality.md, section 6).

    >>> person_of({"persona_role": "night-shift nurse in Manchester", "domain": "health and sleep routines"})
    '\\nThe person: night-shift nurse in Manchester, interested in health and sleep routines.'
    >>> person_of({"persona_role": "birdwatcher", "domain": None, "content": "Role: birdwatcher."})
    '\\nThe person: birdwatcher.'
    """
    if not persona:
        return ""
    if not persona.get("persona_role"):
        return f"\nThe person: {persona['content']}"  # a persona step of another stage's making
    interest = f", interested in {persona['domain']}" if persona.get("domain") else ""
    return f"\nThe person: {persona['persona_role']}{interest}."


@stage("sample/persona")
def persona(record: dict, ctx: dict) -> dict:
    """Pick a persona for the user (seeded); no LM call."""
    chosen = ctx["rng"].choice(ctx["task"]["personas"])
    fields = {"target": "user", "persona_role": chosen["role"],
              **{k: chosen[k] for k in ("expertise", "domain", "goals", "personality", "style_override")}}
    return add_step(record, ctx, "persona", prompts.render_persona(chosen), **fields)


# --- iteration stages ----------------------------------------------------------------------

@stage("lm/flow_controller")
def flow_controller(record: dict, ctx: dict) -> dict:
    """Choose this turn's pattern: the LM says which fit, code draws one by weight, LM writes the hint.

    `judge_eligibility: false` skips the first call (every candidate is eligible, picks follow the
    weights exactly); `generate_hint: false` skips the second (the pattern's hint is used as is).
    """
    cfg, task, turn = ctx["stage"], ctx["task"], ctx["turn"]
    closing = set(cfg["termination_patterns"])
    forced = bool(closing) and task["close_at_max_turns"] and turn >= task["max_turns"]
    if forced:
        candidates = [p for p in cfg["patterns"] if p["name"] in closing]
    else:
        candidates = [p for p in cfg["patterns"] if p["weight"] > 0
                      and (p["name"] not in closing or turn >= task["min_turns"])]
    eligible, reasoning = candidates, "forced: max_turns reached" if forced else "only one candidate"
    if len(candidates) > 1 and not cfg["judge_eligibility"]:
        reasoning = "judge_eligibility off: all candidates eligible"
    elif len(candidates) > 1:
        reply = lm(ctx, user_side(record, ctx, "FLOW_SYSTEM", "FLOW_USER", turn=turn, patterns=patterns_text(candidates),
                                  names=", ".join(p["name"] for p in candidates)),
                   json_schema=eligibility_schema([p["name"] for p in candidates]),
            max_tokens=engine_of(task, cfg)["json_max_tokens"])
        named, reasoning = parse_eligibility(reply)
        eligible = [p for p in candidates if p["name"] in named] or candidates
        if len(eligible) == len(candidates) and not named:
            reasoning = f"reply named no known pattern, all candidates eligible ({reply[:80]!r})"
    weights = [p["weight"] for p in eligible]
    chosen = ctx["rng"].choices(eligible, weights=weights if sum(weights) > 0 else None)[0]
    hint, terminate = chosen["hint"], chosen["name"] in closing
    if cfg["generate_hint"] and not terminate:  # the closing turn keeps its pattern's own hint, as written
        written, _, found = review(ctx, lm(ctx, user_side(record, ctx, "HINT_SYSTEM", "HINT_USER", pattern=chosen["name"],
                                                          description=chosen["description"], hint=chosen["hint"]),
                                           max_tokens=120), "hint")
        hint = written if written and not found else hint
    return add_step(record, ctx, "flow_controller", chosen["name"], terminate=terminate, hint=hint,
                    eligible_patterns=[p["name"] for p in eligible], weights={p["name"]: p["weight"] for p in eligible},
                    reasoning=reasoning)


def eligibility_schema(names: list[str]) -> dict:
    # Small on purpose: tiny models under grammar constraints run to the token cap on big schemas.
    return {"type": "object",
            "properties": {"eligible": {"type": "array", "items": {"type": "string", "enum": names},
                                        "maxItems": len(names)},
                           "reasoning": {"type": "string", "maxLength": 160}},
            "required": ["eligible"]}


def parse_eligibility(reply: str) -> tuple[set, str]:
    """Pattern names and reasoning from the flow controller's JSON; empty set when it does not parse.

    >>> parse_eligibility('Sure: {"eligible": ["chit_chat/follow_up"], "reasoning": "it asked"}')
    ({'chit_chat/follow_up'}, 'it asked')
    """
    data = json_object_in(reply)
    if data is None:
        return set(), "reply was not JSON"
    names = data.get("eligible")
    names = {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
    reasoning = data.get("reasoning")
    return names, reasoning if isinstance(reasoning, str) else ""


def json_object_in(reply: str) -> dict | None:
    """The JSON object in a reply, prose around it allowed (a schema is not always honoured); else None.

    >>> json_object_in('Here you go: {"a": 1} Hope that helps!'), json_object_in("no JSON")
    ({'a': 1}, None)
    """
    match = re.search(r"\{.*\}", reply, re.S)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


@stage("lm/user/guided")
def user(record: dict, ctx: dict) -> dict | str:
    """The simulated user's next message, from persona, scenario, history and this turn's hint.

    A message the review finds a problem in is asked for again once, then the conversation drops.
    The closing turn is asked as a short reply to the assistant's last message (CLOSING_TURN) and
    gets `closing_attempts`: each is one short call, where the conversation before it took ~8.
    """
    cfg, flow = ctx["stage"], last_step(record, "flow_controller")
    closing = bool(flow and flow.get("terminate"))
    hint = flow["hint"] if flow else "Continue the conversation naturally."
    if closing:  # the hint is the pattern's own here (never LM-written), so copying it is parroting too
        said = messages(record)
        prompt = user_side(record, ctx, "USER_SYSTEM", "CLOSING_TURN", last=said[-1]["content"] if said else "", hint=hint)
        instruction, attempts = instruction_of(ctx, "CLOSING_TURN", last="", hint=hint), cfg["closing_attempts"]
        cap = min(cfg["max_tokens"], CLOSING_MAX_TOKENS)
    else:
        prompt = user_side(record, ctx, "USER_SYSTEM", "USER_TURN", hint=hint)
        instruction, attempts, cap = instruction_of(ctx, "USER_TURN", hint=""), 2, cfg["max_tokens"]
    return ask(record, ctx, lambda attempt: prompt, "closing" if closing else "user", "user", attempts=attempts,
               max_tokens=cap, instruction=instruction)


@stage("lm/assistant/naive")
def assistant(record: dict, ctx: dict) -> dict | str:
    """A helpful, friendly reply given the scenario and the history (the persona stays hidden).

    After the user's goodbye it is the conversation's last word, reviewed as a "farewell" (a
    question there is cut: nobody is left to answer it).
    """
    prompt = [{"role": "system", "content": template(ctx, "ASSISTANT_SYSTEM", scenario=scenario_of(record, ctx))}]
    said, flow = messages(record), last_step(record, "flow_controller")
    kind = "farewell" if flow and flow.get("terminate") else "assistant"
    return ask(record, ctx, lambda attempt: prompt + said, kind, "assistant", attempts=2,
               max_tokens=ctx["stage"]["max_tokens"], previous=said[-1]["content"] if said else "")
