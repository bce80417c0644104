"""Every prompt the pipeline sends, as named `string.Template`s.

A task file may replace any of them under `prompts:` (same names, same $variables):

    prompts:
      ASSISTANT_SYSTEM: "You are a terse assistant. Context: $scenario"

`render` fails loudly on a missing variable, so a typo in an override is caught on the
first call instead of reaching the model as a literal `$scenaro`.

    >>> render("USER_TURN", {}, persona="Role: cook.", scenario="A chat.", history="(none)", moves="", hint="Say hi.")
    'Conversation so far:\\n(none)\\n\\nInstruction for your next message: Say hi.\\nYour message:'

A template is given every variable of `VARIABLES[name]`, so an override may use any of them, in
any order. The defaults are laid out for the servers' prefix caches (see USER_SIDE below); an
override that puts something per call first still works, it only costs more uncached tokens.
"""

from string import Template

SCENARIO_SYSTEM = Template(
    "You write short scenarios for casual conversations between a person and an AI assistant."
)

SCENARIO_USER = Template("""\
Here are example scenarios:
$examples

Write ONE new scenario in the same style: a single sentence saying who the person is and what \
they want to chat about.$person
Pick a topic that is clearly different from every example above \
(for instance: $topic_hint). Reply with the sentence only, no quotes, no label.""")

# The calls on the user's side (flow controller, hint, user message) open with the same text, byte
# for byte: the role's rules and the task's moves (the same in every conversation), who the user is
# and the situation (the same in every call of one), then the transcript, which only grows; what
# changes per call comes last. A server's prefix cache then evaluates only each call's new part
# (docs/performance.md). subtle: the persona and situation stay in the system text: moved into the
# request, a small model passed the closing check half as often (docs/performance.md).
USER_SIDE = """\
You are role-playing a human user chatting with an AI assistant. Stay in character. Your messages \
to the assistant are written in the first person, as this person would type them. Do not answer \
as the assistant, do not explain, do not add labels or quotes.$moves
Who you are: $persona
Situation: $scenario"""
# $moves: the task's moves, when the flow controller asks which fit (else empty).
MOVES = Template("""

The moves you can make (a task names the ones open to you):
$patterns""")
SO_FAR = "Conversation so far:\n$history\n\n"

FLOW_SYSTEM = Template(USER_SIDE)

FLOW_USER = Template(SO_FAR + """\
Task: choose your next move (turn $turn) among $names. Reply as JSON: \
{"eligible": [the moves that would be natural next], "reasoning": "one short sentence"}""")

HINT_SYSTEM = Template(USER_SIDE)

HINT_USER = Template(SO_FAR + """\
Task: write a one-sentence instruction for your next message, specific to this conversation. \
Your move: "$pattern": $description
General instruction: $hint""")

USER_SYSTEM = Template(USER_SIDE)

USER_TURN = Template(SO_FAR + """\
Instruction for your next message: $hint
Your message:""")

# The user's closing turn shows only the assistant's last reply: a goodbye needs no more, and with
# the whole conversation in front of it a small model writes one more ordinary turn (docs/quality.md, section 5).
CLOSING_TURN = Template("""\
The assistant just said: "$last"

This is your last message: you are done chatting and leave now. $hint \
Write one or two short sentences and ask nothing new.
Your message:""")

JUDGED = ("coherence", "persona", "naturalness", "closing")  # what lm/judge scores, 1-5 each

JUDGE_SYSTEM = Template(
    "You rate synthetic conversations for a training set, strictly and briefly. Reply in JSON only."
)

JUDGE_USER = Template("""\
Scenario: $scenario
The user: $persona
Conversation:
$history

Rate from 1 (bad) to 5 (excellent): coherence (the replies follow each other and make sense), \
persona (the user sounds like the person described, never like an assistant), naturalness \
(a real person and a helpful assistant could have written it), closing (the last exchange ends \
the conversation well). Reply as JSON: {"coherence": n, "persona": n, "naturalness": n, \
"closing": n, "reason": "one short sentence"}""")

# The scenario last: the same text opens every conversation's assistant calls (a prefix cache's).
ASSISTANT_SYSTEM = Template("""\
You are a helpful, friendly AI assistant having a casual conversation. \
Answer naturally and accurately in a few sentences.
Context: $scenario""")

# One is drawn per scenario and offered as an example of a fresh topic: without it, a model at
# low temperature keeps rewriting the seed scenarios it was shown.
TOPIC_HINTS = (
    "a houseplant that is wilting", "training for a first 10k run", "a board game night",
    "learning to bake sourdough", "a noisy upstairs neighbour", "planning a camping weekend",
    "a favourite childhood cartoon", "saving for a used car", "a dog that pulls on the lead",
    "starting a vegetable patch", "a jazz record they just found", "a long train journey",
    "fixing a dripping tap", "choosing a first guitar", "a local history museum",
    "birdwatching in the city", "a rainy weekend with kids", "learning a second language",
    "a chess opening", "knitting a first scarf", "a street food market", "a new job's first week",
    "composting kitchen scraps", "a football match last night", "photographing the night sky",
    "a family recipe", "keeping fit while working from home", "a documentary about oceans",
    "a road trip playlist", "repairing an old bicycle", "a friend's wedding speech",
    "a heatwave and staying cool", "reading poetry", "a volunteer beach clean-up",
    "a new video game release", "decluttering a wardrobe", "a cat that wakes them at dawn",
    "the history of a local bridge", "a weekly budget for groceries", "trying meditation",
)



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
    traits = [TRAIT_WORDS[t][value > 0] for t, value in (persona.get("personality") or {}).items()
              if t in TRAIT_WORDS and abs(value or 0) >= 0.3]
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

TEMPLATES = {name: value for name, value in globals().items() if isinstance(value, Template)}

# The variables each template is given, so a task's override may use any of them (even one the
# default leaves out, as the user-side system texts leave out the persona they used to hold).
USER_SIDE_VARIABLES = ("scenario", "persona", "history", "moves")
VARIABLES = {
    "SCENARIO_SYSTEM": (), "SCENARIO_USER": ("examples", "person", "topic_hint"),
    "FLOW_SYSTEM": USER_SIDE_VARIABLES, "FLOW_USER": (*USER_SIDE_VARIABLES, "turn", "patterns", "names"), "MOVES": ("patterns",),
    "HINT_SYSTEM": USER_SIDE_VARIABLES, "HINT_USER": (*USER_SIDE_VARIABLES, "pattern", "description", "hint"),
    "USER_SYSTEM": USER_SIDE_VARIABLES, "USER_TURN": (*USER_SIDE_VARIABLES, "hint"),
    "CLOSING_TURN": (*USER_SIDE_VARIABLES, "last", "hint"),
    "JUDGE_SYSTEM": (), "JUDGE_USER": ("scenario", "persona", "history"),
    "ASSISTANT_SYSTEM": ("scenario",),
}


def check_override(name: str, text) -> str | None:
    """The problem with a task's replacement for template `name`, or None if it renders."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    known = VARIABLES[name]
    try:
        Template(text).substitute({v: "" for v in known})
    except KeyError as exc:
        return f"unknown variable ${exc.args[0]}; this template knows: {', '.join('$' + v for v in sorted(known)) or 'none'}"
    except ValueError as exc:
        return f"{exc} (write $$ for a literal $)"
    return None


def render(name: str, overrides: dict, **variables) -> str:
    """Fill template `name` (or the task's override of it) with `variables`."""
    template = Template(overrides[name]) if name in overrides else TEMPLATES[name]
    return template.substitute(variables)
