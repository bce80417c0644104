"""Every prompt the pipeline sends, as named `string.Template`s.

A task file may replace any of them under `prompts:` (same names, same $variables):

    prompts:
      ASSISTANT_SYSTEM: "You are a terse assistant. Context: $scenario"

`render` fails loudly on a missing variable, so a typo in an override is caught on the
first call instead of reaching the model as a literal `$scenaro`.

    >>> render("USER_SYSTEM", {}, persona="Role: cook.", scenario="A chat.", history="(none)", hint="Say hi.")[:30]
    'You are role-playing a human u'
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

FLOW_SYSTEM = Template(
    "You decide what the user in a conversation could plausibly do next. Reply in JSON only."
)

FLOW_USER = Template("""\
Scenario: $scenario
Conversation so far (turn $turn):
$history

Possible next moves for the user:
$patterns

Which of these moves would be natural next? Reply as JSON: \
{"eligible": [names of the natural moves], "reasoning": "one short sentence"}""")

HINT_USER = Template("""\
Scenario: $scenario
The user: $persona
Conversation so far:
$history

The user's next move is "$pattern": $description
General instruction: $hint

Write a one-sentence instruction telling the user what to say next, specific to this \
conversation. Reply with the instruction only.""")

USER_SYSTEM = Template("""\
You are role-playing a human user chatting with an AI assistant. Stay in character.
Who you are: $persona
Situation: $scenario
Write only your next message to the assistant, in the first person, as this person would \
type it. Do not answer as the assistant, do not explain, do not add labels or quotes.""")

USER_TURN = Template("""\
Conversation so far:
$history

Instruction for your next message: $hint
Your message:""")

# The user's closing turn. Only the assistant's last reply is shown: a goodbye needs no more,
# and with the whole conversation in front of it a small model writes one more ordinary turn
# (30 closings asked both ways on SmolLM2-135M: benchmarks/closing.py, docs/quality.md section 5).
CLOSING_TURN = Template("""\
The assistant just said: "$last"

This is your last message: you are done chatting and leave now. $hint \
Write one or two short sentences and ask nothing new.
Your message:""")

# Phrases that make a sentence a thanks or goodbye (quality.is_closing); a task adds its own
# under lm/user/guided's `closing_cues`. Phrases, not words: "thank the assistant", "take
# care of that" and "I'd love to see you there" are not goodbyes.
CLOSING_CUES = (
    "thank you", "thanks", "many thanks", "thank u", "thx", "bye", "goodbye", "good bye", "bye bye",
    "see you soon", "see you later", "see you next", "see you then", "see you around", "see you tomorrow", "see ya",
    "talk soon", "talk to you soon", "talk to you later", "speak soon", "catch you later",
    "until next time", "good night", "goodnight", "farewell", "cheers", "much appreciated", "appreciate it",
    "appreciate your help", "appreciate the help", "grateful", "good day to you", "all the best",
    *(f"have a {good} {time}" for good in ("good", "great", "nice", "lovely", "wonderful")
      for time in ("day", "evening", "night", "week", "weekend", "one")),
)

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

ASSISTANT_SYSTEM = Template("""\
You are a helpful, friendly AI assistant having a casual conversation. \
Context: $scenario
Answer naturally and accurately in a few sentences.""")

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


def check_override(name: str, text) -> str | None:
    """The problem with a task's replacement for template `name`, or None if it renders."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    known = {m.group("named") or m.group("braced") for m in TEMPLATES[name].pattern.finditer(TEMPLATES[name].template)} - {None}
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
