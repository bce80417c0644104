"""Stages beyond the design card's five: `lm/judge` scores a finished conversation, and
`filter/unique_first_user` drops one that opens as an earlier one did.

A task that names either gets this module imported by task.py (stages.MORE_STAGES); with their
rows of settings added to task.STAGE_FIELDS here, they are checked as the core's stages are:

    finalization_stages:
      - name: lm/judge
        min_score: 3.5        # drop a conversation whose mean score is below this
"""

from __future__ import annotations

from . import prompts
from .record import messages
from .stages import engine_of, json_object_in, lm, persona_of, scenario_of, stage, template, transcript
from .task import STAGE_FIELDS, field
from .text import normalise

OPENERS_KEPT = 10_000  # first user messages remembered (this run's and, on resume, the latest on disk)

STAGE_FIELDS.update({
    "lm/judge": [field("min_score", "number", None, "drop a conversation whose mean score (1-5) is below this",
                       low=1, high=5)],
    "filter/unique_first_user": [],
})


@stage("lm/judge")
def judge(record: dict, ctx: dict) -> dict | str:
    """One JSON call scoring the conversation 1-5 on prompts.JUDGED, with a reason, into record["scores"].

    Put it under `finalization_stages`. With `min_score`, a conversation whose mean score is
    below it is dropped; an unusable reply (asked twice) then drops it too, else it is kept unscored.
    """
    cfg, task = ctx["stage"], ctx["task"]
    schema = {"type": "object", "required": [*prompts.JUDGED, "reason"],
              "properties": {**{k: {"type": "integer", "minimum": 1, "maximum": 5} for k in prompts.JUDGED},
                             "reason": {"type": "string", "maxLength": 200}}}
    prompt = [{"role": "system", "content": template(ctx, "JUDGE_SYSTEM")},
              {"role": "user", "content": template(ctx, "JUDGE_USER", scenario=scenario_of(record, ctx),
                                                   persona=persona_of(record), history=transcript(record))}]
    for _ in range(2):
        scores = parse_scores(lm(ctx, prompt, json_schema=schema, max_tokens=engine_of(task, cfg)["json_max_tokens"]))
        if scores:
            break
    else:
        return "judge reply unusable" if cfg["min_score"] else record
    record["scores"] = scores
    if cfg["min_score"] and sum(scores[k] for k in prompts.JUDGED) / len(prompts.JUDGED) < cfg["min_score"]:
        return "judge score below min_score"
    return record


def parse_scores(reply: str) -> dict | None:
    """{coherence, persona, naturalness, closing: 1..5, reason} from the judge's JSON, or None.

    >>> parse_scores('{"coherence": 4, "persona": 5, "naturalness": 4, "closing": 3, "reason": "ok"}')["closing"]
    3
    >>> parse_scores('{"coherence": 9}') is None
    True
    """
    data = json_object_in(reply)
    if data is None or not all(isinstance(data.get(k), int) and 1 <= data[k] <= 5 for k in prompts.JUDGED):
        return None
    return {**{k: data[k] for k in prompts.JUDGED}, "reason": str(data.get("reason") or "")[:200]}


@stage("filter/unique_first_user")
def unique_first_user(record: dict, ctx: dict) -> dict | str:
    """Drop a conversation whose first user message (normalised) opened an earlier one in this run.

    Put it right after lm/user/guided. A resumed run also compares with the latest
    OPENERS_KEPT openers already on disk (`remember_opener`).
    """
    users = [m for m in messages(record) if m["role"] == "user"]
    if len(users) != 1:
        return record
    openers = ctx["memory"].setdefault("first_users", {})
    owner = claim_opener(openers, normalise(users[0]["content"]), record["conversation_id"])
    return record if owner == record["conversation_id"] else "first user message repeats an earlier conversation"


def remember_opener(memory: dict, record: dict) -> None:
    """Add a record's first user message (one of a resumed run's) to what the filter compares with."""
    users = [m["content"] for m in messages(record) if m["role"] == "user"]
    if users:
        claim_opener(memory.setdefault("first_users", {}), normalise(users[0]), record["conversation_id"])


def claim_opener(openers: dict, opener: str, conversation_id: str) -> str:
    """The conversation that owns `opener`: the first to claim it. Keeps the latest OPENERS_KEPT."""
    # subtle: dict.setdefault checks and claims the opener in one step (no Python code runs in
    # between, so no thread switch): of two conversations with the same opener, exactly one owns it.
    owner = openers.setdefault(opener, conversation_id)
    if len(openers) > OPENERS_KEPT:
        openers.pop(next(iter(openers)), None)  # the oldest: memory stays flat in N
    return owner
