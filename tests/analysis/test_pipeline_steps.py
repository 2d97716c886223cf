from datetime import UTC, datetime, timedelta

from analysis.pipeline import (
    PipelineMessage,
    create_batches,
    message_tokens,
    noise_reason,
    prefilter_messages,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def msg(
    i: int, text: str, minutes: float = 0, reply_to: int | None = None, author: str = "Alice"
) -> PipelineMessage:
    return PipelineMessage(
        id=i, sent_at=T0 + timedelta(minutes=minutes), author=author, text=text, reply_to=reply_to
    )


def test_noise_is_recognised_by_reason() -> None:
    assert noise_reason("   ") == "empty"
    assert noise_reason("👍👍") == "emoji_only"
    assert noise_reason("/start") == "bot_command"
    assert noise_reason("ok thanks") == "acknowledgement"
    assert noise_reason("Thank you!") == "acknowledgement"
    assert noise_reason("ok, I will fix the login crash") is None
    assert noise_reason("deploy at 5?") is None


def test_prefilter_counts_what_it_drops_per_reason() -> None:
    messages = [
        msg(1, "The login crashes on Android 14"),
        msg(2, "ok"),
        msg(3, "🎉"),
        msg(4, ""),
        msg(5, "/help"),
        msg(6, "Who wants lunch?"),
        msg(7, "Please update the release checklist"),
    ]
    result = prefilter_messages(messages, keywords=["release"], exclude_keywords=["lunch"])
    assert [m.id for m in result.kept] == [1, 7]
    assert result.stats == {
        "acknowledgement": 1,
        "bot_command": 1,
        "emoji_only": 1,
        "empty": 1,
        "exclude_keyword": 1,
    }


def test_a_short_message_naming_a_project_keyword_is_kept() -> None:
    result = prefilter_messages([msg(1, "ok release")], keywords=["Release"])
    assert [m.id for m in result.kept] == [1]


def test_batches_respect_the_token_budget_in_tokens_not_messages() -> None:
    messages = [msg(i, "word " * 40, minutes=i) for i in range(1, 11)]
    per_message = message_tokens(messages[0])
    batches = create_batches(messages, token_budget=per_message * 3, time_gap=timedelta(hours=1))
    assert [len(b.messages) for b in batches] == [3, 3, 3, 1]
    assert all(b.tokens <= per_message * 3 for b in batches)
    assert [m.id for b in batches for m in b.messages] == list(range(1, 11))


def test_a_conversation_break_starts_a_new_batch() -> None:
    messages = [msg(1, "first topic", 0), msg(2, "still first", 5), msg(3, "next day topic", 180)]
    batches = create_batches(messages, token_budget=10_000, time_gap=timedelta(minutes=60))
    assert [b.message_ids for b in batches] == [[1, 2], [3]]


def test_a_late_reply_stays_with_its_parent_across_a_break() -> None:
    messages = [
        msg(1, "Can someone check the crash?", 0),
        msg(2, "On it, it's the token refresh", 240, reply_to=1),
    ]
    batches = create_batches(messages, token_budget=10_000, time_gap=timedelta(minutes=60))
    assert [b.message_ids for b in batches] == [[1, 2]]


def test_a_reply_cut_off_by_the_budget_gets_its_parent_as_context() -> None:
    messages = [msg(1, "x " * 30, 0), msg(2, "y " * 30, 1), msg(3, "reply to the first " * 3, 2, reply_to=1)]
    budget = message_tokens(messages[0]) + message_tokens(messages[1])
    batches = create_batches(messages, token_budget=budget, time_gap=timedelta(hours=1))
    assert [b.message_ids for b in batches] == [[1, 2], [1, 3]]


def test_messages_come_out_in_chronological_order() -> None:
    messages = [msg(2, "later", 10), msg(1, "earlier", 0)]
    batches = create_batches(messages, token_budget=10_000, time_gap=timedelta(hours=1))
    assert batches[0].message_ids == [1, 2]
