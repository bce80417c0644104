r"""Quality gates: the mistakes models make in generated text, found by name, cleaned where safe.

A training set inherits every mistake of the model that wrote it; a small model makes more of
them, a large one fewer. The stages call `clean` on every reply (it removes what can go without
changing the meaning: labels, prompt lines the model copied, a repeated paragraph or sentence,
the other speaker's next line) and `problems` on what is left (what cannot be cleaned: the stage
retries once, then drops the conversation with the problem's name). `stats` counts the same
checks over a dataset, so the figures mean what the gates mean.

    >>> clean("Situation: a rainy day.\nI love rain! I love rain!")
    ('I love rain!', ['leaked label', 'repeated sentence'])
    >>> problems("Sure, I'd be happy to help you plan [insert city here].", "user")
    ['placeholder', "assistant's voice"]
    >>> is_closing("Thanks a lot, talk soon!", ())
    True
"""

from __future__ import annotations

import re

from .prompts import CLOSING_CUES
from .text import jaccard, normalise, shingles, words

# "[insert location here]", "[Your name]", "<name>", "{{topic}}": slots a template meant to be filled.
PLACEHOLDER = re.compile(r"\[\s*(?:insert|add|enter|your|name|placeholder|topic|location|date|user)\b[^\]]*\]"
                         r"|<\s*(?:name|your[\w ]*|user|location|date|topic|city|placeholder)\s*>|\{\{[^}]*\}\}", re.I)
# A speaker label at the very start of a reply: the content after it is the reply.
LABEL = re.compile(r"^\s*\**(user|assistant|scenario|message|instruction|your message|reply)\**\s*:\s*\**\s*", re.I)
# A line that starts with a label of our prompts (or a made-up one): the model copied the prompt's shape.
LEAKED_LABEL = re.compile(r"^\s*\**(situation|scenario|persona|instruction|hint|context|note|who you are|sender|"
                          r"general instruction|(chat|conversation)( \w+){0,3}|(\w+ )?(your|my) (\w+ ){0,2}message|the next one( is)?|"
                          r"(your|my) (answer|response|reply)|the user|role|instruction for your next message|this is (your|my) (last|final) message|"
                          r"here'?s (a|an|your|my) ([\w-]+ ){0,2}(message|response|reply)|one short sentence)\**\s*:", re.I)
NEXT_SPEAKER = re.compile(r"\n\s*\**(user|assistant|human|ai)\**\s*:", re.I)
ASSISTANT_VOICE = re.compile(
    r"\b(as an ai|i'?m an ai|as a (large )?language model|how (can|may) i (help|assist)( you)?|"
    r"i'?m here to (help|assist)|(i'?ll|i'?m|to) be your (\w+ ){0,2}assistant|"
    r"(i'?d|i would|i'?m|i am|i'?ll) (be )?(so |very |really |more than )?(happy|glad|delighted|pleased|thrilled|excited) "
    r"to (help|assist)|assist you with|i'?m (a|an|your) (\w+ ){0,2}(ai|assistant|chatbot|language model)|"
    r"let me know if (you|there'?s)|feel free to (ask|reach out)|is there anything else i can|"
    r"happy to help|i hope (this|that) helps|(happy|glad) to be of (service|help)|at your service)\b", re.I)
ECHO = 0.6  # share of the user's 3-grams that an assistant reply repeats to count as echoing it
PARROT = 5  # words in a row copied from the instruction that make a message a parroted instruction
# A closing is a sentence or two: the seed closings have at most 3 sentences and 21 words.
CLOSING_SENTENCES, CLOSING_WORDS = 4, 60
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Small models write about a goodbye instead of saying it: "a note that says thank you", "just
# say goodbye", 'a confident "Thanks"'.
QUOTED = re.compile(r'"[^"]*"|“[^”]*”')
MENTIONED = {"says", "saying", "said"}


def clean(text: str) -> tuple[str, list[str]]:
    r"""`text` without what can safely go, and the names of what went.

    >>> clean('User: "Nice! What next?"\nAssistant: Well...')
    ('Nice! What next?', ['next speaker', 'label'])
    """
    fixes = []
    kept = NEXT_SPEAKER.split(text, maxsplit=1)[0]
    fixes += ["next speaker"] if kept != text else []
    unlabelled = LABEL.sub("", kept.strip()).strip()
    fixes += ["label"] if unlabelled != kept.strip() else []
    lines = [line for line in unlabelled.splitlines() if line.strip()]
    content = [line for line in lines if not LEAKED_LABEL.match(line)]
    if content and len(content) < len(lines):  # a reply made only of a leaked line stays: `problems` names it
        fixes.append("leaked label")
        lines = content
    paragraphs = _unique(lines, lambda a, b: normalise(a) == normalise(b) or jaccard(shingles(a), shingles(b)) >= 0.8)
    fixes += ["repeated paragraph"] if len(paragraphs) < len(lines) else []
    text = "\n".join(paragraphs)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    split = re.split(r"(?<=[.!?])[ \t]+", text)
    once = _unique(split, lambda a, b: normalise(a) == normalise(b))
    if len(once) < len(split):
        fixes.append("repeated sentence")  # small models loop: "I'm so glad! I'm so glad! ..."
        text = " ".join(once)
    return text, fixes


def _unique(items: list[str], same) -> list[str]:
    kept = []
    for item in items:
        if not any(same(item, earlier) for earlier in kept):
            kept.append(item)
    return kept


def problems(text: str, role: str, previous: str = "") -> list[str]:
    """What is wrong with a cleaned message that cleaning cannot fix, by name.

    `role` is "user", "assistant" or "scenario"; `previous` the message it answers (for echoes).
    """
    found = []
    if PLACEHOLDER.search(text):
        found.append("placeholder")
    if any(LEAKED_LABEL.match(line) for line in text.splitlines()):
        found.append("leaked label")
    if role == "user" and ASSISTANT_VOICE.search(text):
        found.append("assistant's voice")
    if role == "assistant" and echoes(text, previous):
        found.append("echo of the user")
    return found


def echoes(reply: str, message: str) -> bool:
    """The reply repeats most of the message it answers (a message of 6 words or more)."""
    grams = shingles(message)
    return len(normalise(message).split()) >= 6 and len(grams & shingles(reply)) / len(grams) >= ECHO


def is_closing(text: str, extra_cues) -> bool:
    """The message reads as a goodbye: it asks nothing, it is short, and one of its last two
    sentences thanks or says goodbye (prompts.CLOSING_CUES, plus a task's own cues).

    A cue anywhere is not enough: small models put "thank" inside rambling text that goes on.

    >>> is_closing("Great, thanks! I'll try that tomorrow.", ())
    True
    >>> is_closing("Thanks! What else can I plant in spring?", ())
    False
    """
    found = sentences(QUOTED.sub(" ", text))  # a thanks in quotes is talked about, not said
    return ("?" not in text and len(found) <= CLOSING_SENTENCES and len(words(text)) <= CLOSING_WORDS
            and any(has_cue(sentence, extra_cues) for sentence in found[-2:]))


def cut_after_goodbye(text: str, extra_cues) -> str:
    """A closing message that ran on past its goodbye, cut after it; any other text as it is.

    On the closing turn what follows the goodbye is the model writing on (like the other
    speaker's next line), so it can go; a message that is already a closing is kept whole.

    >>> cut_after_goodbye("Thanks, that was fun. Bye! PS: what is your favourite colour?", ())
    'Thanks, that was fun. Bye!'
    """
    if is_closing(text, extra_cues):
        return text
    found = sentences(text)
    last = max((i for i, sentence in enumerate(found) if has_cue(sentence, extra_cues)), default=None)
    return text if last is None else " ".join(found[:last + 1])


def sentences(text: str) -> list[str]:
    return [part.strip() for part in SENTENCE_END.split(text) if part.strip()]


def has_cue(sentence: str, extra_cues) -> bool:
    """A thanks or goodbye said, not talked about: not in quotes, not after "says" or "just say".

    >>> has_cue("Thanks, see you!", ()), has_cue('Just say goodbye, or a quick "thanks".', ())
    (True, False)
    """
    said = normalise(QUOTED.sub(" ", sentence)).split()
    for cue in (normalise(cue).split() for cue in (*CLOSING_CUES, *extra_cues)):
        if any(said[i:i + len(cue)] == cue and not mentioned(said[max(0, i - 2):i]) for i in range(len(said))):
            return True
    return False


def mentioned(before: list[str]) -> bool:
    """The two words before a cue make it talk about a goodbye: "says thanks", "just say goodbye"
    (but "I say thanks", "wanted to say thank you" say it)."""
    return bool(before) and (before[-1] in MENTIONED or before[-1] == "say" and before[:1] not in (["i"], ["to"], ["we"]))


def parrots(text: str, instruction: str) -> bool:
    """The message copies PARROT words in a row from the instruction it was given.

    >>> parrots("Wrap up in a sentence or two: bye!", "This is your last message: wrap up in a sentence or two.")
    True
    """
    return bool(shingles(text, PARROT) & shingles(instruction, PARROT)) and len(words(text)) >= PARROT


def copies(text: str, earlier: list[str], share: float = 0.6) -> bool:
    """`text` contains most of some earlier text's 3-grams (`share`), or is contained in it.

    Catches a seed copied word for word with a sentence added, which Jaccard alone lets through.
    """
    grams = shingles(text)
    return any(len(grams & other) >= share * min(len(grams), len(other)) for other in map(shingles, earlier))
