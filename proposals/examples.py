"""Past review decisions shown to the LLM as examples (a task config's `review_examples`):
approved proposals as the reviewer left them, with the messages they came from, and
rejected ones with the reviewer's reason, from the projects a batch is analysed for.

A selector: it reads, ranks and picks; what an example costs in the prompt is the
caller's measure (`cost`), so that this app needs nothing of the prompt's format.
"""

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, Prefetch

from proposals.models import TaskProposal
from sources.models import Message

# The most recently reviewed proposals of the projects considered, however many were
# reviewed: the queries and the ranking stay bounded (two queries, this many rows).
CANDIDATES = 200

# Words of three letters or more, less the commonest English ones, which every chat shares.
_WORD = re.compile(r"\w{3,}")
_STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out his has have this that with "  # noqa: SIM905
    "from they will would there their what about which when your just please thanks".split()
)


@dataclass(frozen=True)
class ReviewExample:
    id: int
    approved: bool  # else rejected
    title: str
    description: str
    reason: str  # a rejection's review note
    sources: tuple[str, ...]  # the texts of its source messages, oldest first
    chat_ids: frozenset[int]
    reviewed_at: datetime


def words(texts: Iterable[str]) -> frozenset[str]:
    """The lower-cased words of `texts` that say something (`_WORD`, less `_STOPWORDS`)."""
    return frozenset(w for text in texts for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)


def review_candidates(*, project_ids: Sequence[int], exclude_run_id: int | None) -> list[ReviewExample]:
    """The `CANDIDATES` most recently reviewed proposals of `project_ids` that were approved
    or rejected (pending and merged ones teach nothing), not of the run `exclude_run_id`
    (its own proposals are not decided yet, or decided by the same answer being made)."""
    proposals = (
        TaskProposal.objects.filter(
            project_id__in=project_ids,
            status__in=[TaskProposal.Status.APPROVED, TaskProposal.Status.REJECTED],
        )
        .only("pk", "status", "title", "description", "review_note", "reviewed_at", "created_at")
        .order_by(F("reviewed_at").desc(nulls_last=True), "-pk")
        .prefetch_related(
            Prefetch(
                "source_messages",
                queryset=Message.objects.only("pk", "chat_id", "text", "sent_at").order_by("sent_at", "pk"),
            )
        )
    )
    if exclude_run_id is not None:
        proposals = proposals.exclude(run_id=exclude_run_id)
    return [
        ReviewExample(
            id=p.pk,
            approved=p.status == TaskProposal.Status.APPROVED,
            title=p.title,
            description=p.description,
            reason=p.review_note,
            sources=tuple(m.text for m in p.source_messages.all()),
            chat_ids=frozenset(m.chat_id for m in p.source_messages.all()),
            reviewed_at=p.reviewed_at or p.created_at,
        )
        for p in proposals[:CANDIDATES]
    ]


def rank_examples(
    candidates: Sequence[ReviewExample], *, chat_ids: Iterable[int], texts: Iterable[str]
) -> list[ReviewExample]:
    """`candidates`, most similar to a batch first: one citing a message of the batch's
    chats before any other, then by the words they share with the batch's texts (the
    example's title and sources; Ochiai's overlap, |A∩B| / √(|A|·|B|), so that a long
    example is not preferred for its length alone), then the most recently reviewed, then
    the highest id."""
    chats = frozenset(chat_ids)
    batch_words = words(texts)

    def key(example: ReviewExample) -> tuple[bool, float, datetime, int]:
        own = words([example.title, *example.sources])
        shared = len(own & batch_words)
        score = shared / math.sqrt(len(own) * len(batch_words)) if shared else 0.0
        return (bool(example.chat_ids & chats), score, example.reviewed_at, example.id)

    return sorted(candidates, key=key, reverse=True)


def select_review_examples(
    *,
    project_ids: Sequence[int],
    chat_ids: Iterable[int],
    texts: Iterable[str],
    exclude_run_id: int | None,
    limit: int,
    budget: int,
    cost: Callable[[Sequence[ReviewExample]], int],
) -> list[ReviewExample]:
    """At most `limit` examples for a batch of `texts` from `chat_ids`, most similar first
    (`rank_examples`), whose `cost` together (the tokens they take in the prompt, as the
    caller renders them) is at most `budget`.

    Taken in rank order; one that does not fit is skipped and the next ones are still tried,
    so a long example gives way to a shorter, less similar one rather than leave the budget
    unused."""
    if limit <= 0 or budget <= 0 or not project_ids:
        return []
    ranked = rank_examples(
        review_candidates(project_ids=project_ids, exclude_run_id=exclude_run_id),
        chat_ids=chat_ids,
        texts=texts,
    )
    chosen: list[ReviewExample] = []
    for example in ranked:
        if len(chosen) >= limit:
            break
        if cost([*chosen, example]) <= budget:
            chosen.append(example)
    return chosen
