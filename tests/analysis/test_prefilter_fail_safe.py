"""The prefilter fails safe: a message its word rules would drop as filler or fragment is kept
when it may carry a task by its form (a question, a modal, a date, a mention, an imperative),
and `evaluate_extraction` shows the rules per fold of the development part."""

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command

from analysis.models import AnalysisRun
from analysis.pipeline import PipelineMessage, keep_reason, noise_reason, prefilter_messages
from analysis.services import begin_run, plan_run, start_run
from tests.analysis.helpers import WINDOW_END, WINDOW_START, make_setup
from tests.factories import UserFactory

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def kept(*texts: str, names: tuple[str, ...] = ()) -> list[str]:
    messages = [PipelineMessage(id=i, sent_at=T0, author="A", text=t) for i, t in enumerate(texts)]
    return [m.text for m in prefilter_messages(messages, names=names).kept]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("What do we do next?", "question"),  # no content word: filler by the word rules
        ("Anything else?", "question"),
        ("We should.", "modal"),
        ("Let's go.", "modal"),
        ("We have to.", "modal"),
        ("Next Tuesday.", "date"),
        ("By 5pm, okay", "date"),
        ("@dmitri okay", "mention"),
        ("Send it.", "imperative"),
        ("So check it.", "imperative"),
    ],
)
def test_a_message_the_word_rules_would_drop_is_kept_for_its_form(text: str, reason: str) -> None:
    assert noise_reason(text) in {"filler", "fragment"}
    assert keep_reason(text) == reason
    assert kept(text) == [text]


@pytest.mark.parametrize("text", ["Really?", "Hmm?", "Um, so, you know.", "Oh, plastic.", "Send"])
def test_talk_without_such_a_form_is_still_dropped(text: str) -> None:
    # A question of fillers only; no cue; a lone verb is not an imperative sentence.
    assert keep_reason(text) is None
    assert kept(text) == []


def test_naming_a_team_member_keeps_a_fragment_as_whole_words_only() -> None:
    assert kept("Marketing, right. Um.") == []
    assert kept("Marketing, right. Um.", names=("Marketing",)) == ["Marketing, right. Um."]
    # "al" is a name, not every word that holds it.
    assert kept("Also, plastic.", names=("Al",)) == []
    assert kept("Al, plastic.", names=("Al",)) == ["Al, plastic."]


def test_acknowledgements_and_empty_messages_are_dropped_whatever_the_form() -> None:
    assert kept("ok?", "  ", "👍") == []


@pytest.mark.django_db
def test_a_run_keeps_a_message_naming_a_member_of_the_projects_team(fake_openai) -> None:
    setup = make_setup(fake_openai.base_url, lines=["Dmitri, okay.", "Oh, plastic.", "Carla, right."])
    member = UserFactory(username="dmitri", first_name="Dmitri", last_name="Ivanov")
    config = setup["project"].configs.get()
    config.team = [{"user_id": setup["lead"].pk, "role": "lead"}, {"user_id": member.pk, "role": "member"}]
    config.save()

    run = start_run(
        window_start=WINDOW_START,
        window_end=WINDOW_END,
        projects=[setup["project"]],
        assignment=setup["assignment"],
    )
    begin_run(run_id=run.pk)
    plan_run(run_id=run.pk)
    run = AnalysisRun.objects.get(pk=run.pk)

    names = run.config_snapshot["projects"][0]["member_names"]
    assert {"dmitri", "Dmitri", "Ivanov", "alice", "Alice"} <= set(names)
    assert (run.messages_fetched, run.messages_kept) == (3, 1)  # Carla is on no team
    assert run.prefilter_stats == {"fragment": 2}


def utterance(uid: str, text: str) -> dict:
    return {"id": uid, "speaker": "A", "start": 0, "end": 1, "da_type": None, "text": text}


def test_evaluate_extraction_prints_the_prefilter_per_fold_without_an_agent(tmp_path: Path, capsys) -> None:
    def meeting(meeting_id: str, lines: list[str], sources: list[int]) -> dict:
        return {
            "meeting_id": meeting_id,
            "speakers": {"A": {"role": "ME", "participant": "X1"}},
            "has_summlink": bool(sources),
            "gold_actions": [
                {"id": "g", "text": "t", "source_da_ids": [f"{meeting_id}.{i}" for i in sources]}
            ],
            "gold_decisions": [],
            "utterances": [utterance(f"{meeting_id}.{i}", text) for i, text in enumerate(lines)],
        }

    path = tmp_path / "ami.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for data in (
            meeting("ES2002a", ["Okay.", "Um.", "Marketing, right. Um.", "Send the report."], [2, 3]),
            meeting("ES2010b", ["Mm-hmm.", "What do we do next?", "Yeah."], [1]),
            meeting("IB4001", ["Okay.", "The buttons are too small."], []),
            meeting("TS3003a", ["Held out: never read for the dev part."], []),
        ):
            out.write(json.dumps(data) + "\n")
    output = tmp_path / "folds.json"

    call_command(
        "evaluate_extraction",
        "--dataset",
        "ami",
        "--part",
        "dev",
        "--path",
        str(path),
        "--output",
        str(output),
    )

    folds = {f["fold"]: f for f in json.loads(output.read_text())["prefilter_folds"]}
    assert list(folds) == ["ES2002-ES2008", "ES2009-ES2016", "IB"]
    first = folds["ES2002-ES2008"]
    # "Marketing" names the marketing expert, the meeting's one speaker: kept.
    assert (first["messages"], first["dropped_share"], first["gold_source_kept_share"]) == (4, 0.5, 1.0)
    assert first["targets"]["dropped_share"]["met"] and first["targets"]["gold_source_kept_share"]["met"]
    second = folds["ES2009-ES2016"]
    assert (second["messages"], second["gold_source_messages_kept"]) == (3, 1)
    assert folds["IB"]["gold_source_messages"] == 0
    assert "gold_source_kept_share" not in folds["IB"]["targets"]  # nothing linked to measure
    printed = capsys.readouterr().out
    assert "ES2009-ES2016" in printed and "none linked" in printed
