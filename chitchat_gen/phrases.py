"""The gates' phrase lists: named data that a task extends under `quality.phrases.<list>`.

How a list's entries match is said above it. Entries of ours may be regular expressions (gates.py
compiles them); a task's are plain text. The lists are English.

    >>> "closing_cues" in PHRASES and "thanks" in NOT_A_SCENARIO
    True
"""

# Regex fragments, matched case-insensitively after "[" or "<": slots a template meant to be
# filled ("[insert location here]", "[Your name]", "<name>"); "{{...}}" always is one.
PLACEHOLDERS = ("insert", "add", "enter", "your", "name", "placeholder", "topic", "location", "date", "user", "city")
# Regex fragments: a label at the very start of a reply; the content after it is the reply. Kin
# and titles may carry a capitalised name ("Auntie Jane:", "Dr Patel:"): a model that writes a
# transcript names its speakers. "The person:" opens a scenario that copies lm/scenario's line on
# its persona: the rest is a scenario for that person.
SPEAKER_LABELS = ("user", "assistant", "human", "ai", "me", "scenario", "message", "instruction", "your message", "reply",
                  "the person", "auntie", "aunt", "uncle", "grandma", "granny", "grandpa", "mom", "mum", "dad", "mr", "mrs", "ms",
                  "miss", "dr", "doctor", "professor", "chef", "coach", "captain")
# Regex fragments: a line that starts with one of these and a colon copies the shape of our
# prompts (or makes one up): "Situation: ...", "Your last message: ...", "Chat to: writer123".
LEAKED_LABELS = ("situation", "scenario", "persona", "instruction", "hint", "context", "note", "who you are", "sender",
                 "general instruction", r"(chat|conversation)( \w+){0,3}", r"(\w+ )?(your|my) (\w+ ){0,2}message",
                 r"the next one( is)?", r"(your|my) (answer|response|reply)", "the user", "role",
                 "instruction for your next message", r"this is (your|my) (last|final) message",
                 r"here'?s (a|an|your|my) ([\w-]+ ){0,2}(message|response|reply)", "one short sentence")
# Regex fragments: words in parentheses or brackets that make them a note about the chat, not
# part of it: "(next message to the assistant is ...)", "(reminder: don't include yourself in this chat)".
META_NOTES = ("assistant", "chatbot", "the user", r"reminder\s*:", r"note\s*:", "instructions?", "persona", "scenario",
              "continuation", "in character", "role-?play", r"(the|next|last|previous|this|my|your) message",
              r"(this|the) (chat|conversation)")
# Regex fragments: a sentence that starts like this is about the message: "Here is a continuation of the previous message."
META_LINES = (r"here('s| is) (a |the |my )?(continuation|rest|next part)\b", r"(this is )?(a |the )?continuation of\b",
              r"continuing (from )?(the|my|your) (previous|last)", r"\(?continued\)?$",
              r"the following is (the|a|my|your) (message|reply|response)", r"the (original|last|next|previous) message (was|is)\b",
              r"the message is\s*:", r"please feel free to remove this",
              r"(please )?(modify|rewrite|revise|edit|change|continue|adjust|update) (the|this|your|my) "
              r"(conversation|dialogue|chat|message|response|reply) (to|so|by|with)\b")
# Plain words, and their -s, -ed and -ing forms: parentheses or asterisks that start with one
# are a stage direction or a role-play action ("(laughs)", "(smiling knowingly)", "*leans back in chair*").
STAGE_DIRECTIONS = ("laugh", "chuckle", "giggle", "smile", "grin", "sigh", "nod", "wink", "shrug", "pause", "gasp",
                    "cough", "lean", "wave", "blush", "beam", "smirk", "sob", "hug", "whisper", "shout", "exclaim",
                    "glance", "yawn", "stretch", "clap", "gesture", "snicker", "scratch", "tilt", "sip", "sniff",
                    "frown", "blink", "mutter", "grumble", "wipe", "squeal", "cheer", "beaming", "clears", "looks",
                    "point", "notice", "gaze", "stare")
# Regex fragments: a user message saying these talks as the assistant.
ASSISTANT_VOICE = (
    r"as an ai", r"i'?m an ai", r"as a (large )?language model", r"how (can|may) i (help|assist)(?! (?!you\b)\w)",
    r"i'?m here to (help|assist)", r"(i'?ll|i'?m|to) be your (\w+ ){0,2}assistant",
    r"(i'?d|i would|i'?m|i am|i'?ll) (be )?(so |very |really |more than )?(happy|glad|delighted|pleased|thrilled|excited) "
    r"to (help|assist)", r"assist you with", r"i'?m (a|an|your) (\w+ ){0,2}(ai|assistant|chatbot|language model)",
    r"let me know if (you|there'?s)", r"feel free to (ask|reach out)", r"is there anything else i can",
    r"happy to help", r"i hope (this|that) helps", r"(happy|glad) to be of (service|help)", r"at your service",
    r"what can i (do|help you with)( for you)?", r"how can i be of (help|assistance|service)",
    r"what would you like to (talk|chat) about", r"is there (anything|something) i can (do|help)",
)
# Regex fragments, matched on the words of one clause of a sentence (lower case, no punctuation):
# what a closing says. A closing takes leave, thanks, or wishes well (is_closing), and people say
# each in many words, so these name the forms, not the idioms: a verb of leaving after a "have
# to" ("gotta go", "I should get going", "need to run"), "nice/great/fun ... talking/chatting",
# "see/talk to/catch you ...". What is not a closing stays out by form too: "have a great day"
# only as a wish (alone or after "you", "hope you", "and": not "I have a great day so far"),
# "take care" not "of", "see you" not after "to" ("I'd love to see you there"), "thanks" not
# "thanks to the rain", "grateful" only for something ("grateful for the people who inspire me"
# is no goodbye). A cue after "no", "not", "don't" ... in its clause is not said ("No, no thanks").
_MODAL = (r"(?:gotta|got to|have to|has to|need to|should|must|better|had better|ought to|gonna|gonna have to|"
          r"going to have to|will have to|i'll have to|time to|time for me to|about to|going to|i'm going to)")
_LEAVE = (r"(?:go|go now|run|leave|split|jet|bounce|dash|scoot|scat|blast|fly|head out|head off|head home|head to \w+|"
          r"get going|get goin|be going|be off|get off|get back to \w+|get to (?!know\b)\w+|sign off|sign out|log off|log out|hop off|take off|"
          r"peace out|get ready for \w+|go to bed|go to sleep|head to bed|let you go|leave you to it|"
          r"(?:end|close) (?:it|this|the chat|this chat|the conversation|this conversation|out))")
_PARTING = r"(?:again|soon|sometime|some time|another time|in the future|later|tomorrow|around|next time)"
TAKING_LEAVE = (
    rf"{_MODAL}(?: \w+)? {_LEAVE}", r"gtg|g2g|ttyl|ttys", r"(?:i'm|im|i am) (?:off|out|outta here|leaving|done for (?:the day|today|now))",
    r"(?:heading|signing|logging|hopping) (?:out|off)", r"(?:i'm|im|i am) (?:going|off|headed|heading) to (?:bed|sleep|class|work)",
    r"bye+|bye bye|byebye|goodbye|good bye|buh bye|farewell|adios|adieu|ciao|cheerio|toodles|peace out|^peace$|cheers",
    r"(?<!\bto )(?:see|c) (?:you|ya|yah|u|y'all)(?! there)", r"cya|seeya|^(?:\w+ )?laters?$", r"until next time|till next time|til next time",
    rf"(?:talk|chat|speak)(?: (?:to|with) (?:you|ya|u))? {_PARTING}", rf"catch (?:you|ya|u|each other)(?: \w+){{0,3}} {_PARTING}|catch you on the flip side",
    rf"(?:connect|reconnect|meet|run into (?:you|each other)|bump into (?:you|each other)|cross paths)(?: \w+)? {_PARTING}",
    r"(?:i'll|i will|we'll|we will) (?:talk|chat) (?:to|with) (?:you|ya)", r"until we meet again",
    r"good ?night|nighty? night|night night|^night$|^nite$",
    r"take care(?! of)", r"(?:cut|cutting) (?:this|it|our \w+|the \w+) short", r"(?:it was|it's been|it has been|been|what) a pleasure",
    r"(?:nice|great|good|fun|lovely|awesome|cool|wonderful|fantastic|amazing|a pleasure|pleasure|a blast|a joy) "
    r"(?:talking|chatting|speaking|meeting you|getting to know you|talkin|chattin|to talk|to chat|to speak)",
    r"(?:nice|great|good|fun|lovely|awesome|wonderful|interesting|long|fun little) (?:chat|conversation|convo|talk|discussion)",
    r"(?:this (?:was|has been|'s been)|it (?:has|'s) been) (?:so |really |very |super |a lot of |such )?"
    r"(?:fun|great|lovely|nice|helpful|a pleasure|a blast|awesome|wonderful|fantastic)(?= ?\w*$| talking| chatting)",
    r"(?:enjoyed|loved|liked|love|enjoy) (?:talking|chatting|our chat|the chat|this chat|our conversation|the conversation|this conversation)",
)
THANKS = (
    r"thank (?:you|u|ya|ye|yall|y'all)", r"thankyou|thanku|thanx|thnx|thx|tysm|tyvm|many thanks|much appreciated",
    r"thanks(?! to (?!you|u\b))", r"can't thank you enough", r"appreciate (?:it|that|this|you|your \w+|the \w+|all)",
    r"(?:i'm|i am|so|very|really) grateful|grateful for (?:your|the|this|our|all) (?:\w+ )?(?:help|time|chat|advice|tips|conversation|ideas|support|patience)",
)
WISHES = (
    r"(?:^|(?:you|u|ya|and|now|so|also|ok|okay|well|please|hope you|wish you|alright|then|oh|yeah) )"
    r"have (?:an? (?:\w+ ){0,4}(?:day|night|evening|morning|afternoon|week|weekend|one|time|trip|flight|summer|semester|"
    r"holiday|holidays|break|lunch|dinner|meal|class|test|exam|game|shift|vacation|\w+day)|fun|a blast)",
    r"^(?:and |so |now |also )?enjoy\b|hope (?:you|u) (?:have|enjoy|feel better|get some rest|sleep well|do well|win)|hope (?:all|it|everything|things) goes? well",
    r"good ?luck|best of luck|all the best|best wishes|wishing you|take it easy|stay safe|be safe|be well|rest well|sleep well|"
    r"sweet dreams|feel better soon|good day to you|wish you (?:\w+ )?(?:luck|the best|well)",
    r"^(?:\w+ )?(?:and )?(?:you|u) too$",
)
CLOSING_CUES = (*TAKING_LEAVE, *THANKS, *WISHES)
# Plain words: a cue in a clause after one of these (up to four words before it) is denied or
# supposed, not said: "No need to say goodbye", "I don't have to go", "if you want to talk again later".
NEGATIONS = ("no", "not", "don't", "dont", "never", "won't", "wont", "didn't", "doesn't", "without", "nor", "cannot", "if")
# Plain words: a cue right after one of these is talked about, not said ("a note that says thank you").
MENTIONED = ("says", "saying", "said")
# Plain words: a user message whose list items (two or more) all open with one of these restates
# its instruction ("1. Open a new topic.\n2. Ask an open question."); a user's own list names
# things or asks ("- tent\n- stove", "1. How long should I rest the dough?").
INSTRUCTION_VERBS = ("write", "ask", "open", "share", "tell", "say", "keep", "mention", "reply", "respond", "pick", "use",
                     "include", "avoid", "thank", "express", "follow", "introduce", "continue", "stay", "end", "start",
                     "focus", "add", "greet", "talk", "discuss", "offer", "make", "be", "show", "give", "provide")
# Regex fragments: an assistant reply saying these speaks as one of the user's kind, in the
# user's voice ("Fellow carpenters!", "As a fellow gardener, I ...").
USER_VOICE = (r"^\W*(?:(?:hey|hi|hello|greetings|dear|oh|well|welcome)\W+)?(?:my )?fellow \w+", r"\bas a fellow\b",
              r"\bi'?m a fellow\b")
# Plain words: a scenario that opens with one of these speaks as someone (I, you, we), greets or
# answers: "I'm so glad I could help!" is a reply, not a scenario.
NOT_A_SCENARIO = ("i", "i'm", "i'd", "i'll", "i've", "im", "me", "my", "we", "we're", "we'll", "our", "us", "you",
                  "you're", "your", "thanks", "thank", "sure", "hello", "hi", "hey", "yes", "no", "okay", "ok", "wow",
                  "oh", "here", "here's", "how", "what", "let's", "glad", "great", "absolutely", "certainly")
PHRASES = {"placeholders": PLACEHOLDERS, "speaker_labels": SPEAKER_LABELS, "leaked_labels": LEAKED_LABELS,
           "meta_notes": META_NOTES, "meta_lines": META_LINES, "stage_directions": STAGE_DIRECTIONS,
           "assistant_voice": ASSISTANT_VOICE, "instruction_verbs": INSTRUCTION_VERBS, "user_voice": USER_VOICE,
           "closing_cues": CLOSING_CUES, "mentioned": MENTIONED, "negations": NEGATIONS,
           "not_a_scenario": NOT_A_SCENARIO}
