"""The extraction evaluation: the matcher, the loader, the prefilter on speech and the command
end to end against the OpenAI-compatible fake. Every meeting and sentence here is written for
the tests; the annotated data itself is read only from ../shared/eval/ and never copied."""

import gzip
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from agents.models import AgentTaskAssignment
from agents.services import ensure_default_task_config
from analysis.evaluation import (
    SHIPPED_BUDGETS,
    GoldItem,
    Proposal,
    Score,
    load_ami,
    looks_like_request,
    match_proposals,
    score_meeting,
    title_similarity,
)
from analysis.models import AnalysisRun
from analysis.pipeline import noise_reason
from projects.models import Project
from proposals.models import TaskProposal
from sources.models import Chat, Message
from tests.factories import AgentFactory, LLMProviderFactory
from tests.fakes.openai_server import FakeOpenAI, propose_actionable

pytestmark = pytest.mark.django_db

GOLD = [
    GoldItem(
        id="g1",
        text="The industrial designer will work on the working design of the remote.",
        source_ids=frozenset({"u3"}),
    ),
    GoldItem(
        id="g2", text="The marketing expert will send the market research report.", source_ids=frozenset()
    ),
]


def utterance(uid: str, speaker: str, start: float, text: str) -> dict:
    return {"id": uid, "speaker": speaker, "start": start, "end": start + 2, "da_type": None, "text": text}


def meeting(meeting_id: str, utterances: list[dict], gold: list[dict]) -> dict:
    return {
        "meeting_id": meeting_id,
        "speakers": {"A": {"role": "PM", "participant": "X1"}, "B": {"role": "ID", "participant": "X2"}},
        "has_summlink": True,
        "gold_actions": gold,
        "gold_decisions": [],
        "utterances": utterances,
    }


# Ten minutes apart, so that every line of the prompt shows its time as the fake expects.
SLICE = [
    meeting(
        "ES9001a",
        [
            utterance("ES9001a.u1", "A", 0, "Okay."),
            utterance(
                "ES9001a.u3", "A", 1200, "Could you please fix the remote control prototype before Friday?"
            ),
            utterance("ES9001a.u2", "B", 600, "Um, yeah."),
            utterance("ES9001a.u4", "B", 1800, "The buttons are too small on the current design."),
            utterance("ES9001a.u5", "B", 2400, "I'll send the market research report to everyone."),
            utterance("ES9001a.u6", "A", 3000, "Mm-hmm."),
            utterance("ES9001a.u7", "A", 3600, "Please fix the crash in the demo software."),
        ],
        [
            {
                "id": "g1",
                "text": "The industrial designer will fix the prototype.",
                "source_da_ids": ["ES9001a.u3"],
            },
            {
                "id": "g2",
                "text": "The industrial designer will send the market research report.",
                "source_da_ids": [],
            },
        ],
    ),
    meeting(
        "TS9001a",  # held out: never read for the development part
        [utterance("TS9001a.u1", "A", 0, "Please fix everything.")],
        [{"id": "h1", "text": "Fix everything.", "source_da_ids": ["TS9001a.u1"]}],
    ),
    meeting("IB9003", [], [{"id": "g4", "text": "Nobody said anything.", "source_da_ids": []}]),
    meeting(
        "IB9002",
        [
            utterance("IB9002.u1", "A", 0, "Um."),
            utterance("IB9002.u2", "B", 600, "Please check the battery prices with the supplier."),
            utterance("IB9002.u3", "A", 1200, "And you build the clay model for the evaluation."),
        ],
        [
            {
                "id": "g3",
                "text": "The industrial designer will build a clay model.",
                "source_da_ids": ["IB9002.u3"],
            }
        ],
    ),
]


@pytest.fixture
def ami_slice(tmp_path: Path) -> Path:
    path = tmp_path / "ami.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for item in SLICE:
            out.write(json.dumps(item) + "\n")
    return path


# The matcher


def test_a_proposal_citing_a_gold_source_matches_it() -> None:
    proposal = Proposal(title="Something else entirely", source_ids=frozenset({"u3", "u9"}))
    assert match_proposals([proposal], GOLD) == [(0, 0)]


def test_a_paraphrased_title_matches_without_a_citation() -> None:
    proposal = Proposal(title="Send the market research report (marketing)", source_ids=frozenset({"u8"}))
    assert title_similarity(proposal.title, GOLD[1].text) >= 0.5
    assert match_proposals([proposal], GOLD) == [(0, 1)]


def test_an_unrelated_proposal_is_a_miss() -> None:
    proposal = Proposal(title="Book a room for the party", source_ids=frozenset({"u8"}))
    assert title_similarity(proposal.title, GOLD[0].text) < 0.5
    assert match_proposals([proposal], GOLD) == []


def test_a_gold_item_is_found_once_so_a_duplicate_costs_precision() -> None:
    proposals = [
        Proposal(title="Working design of the remote", source_ids=frozenset({"u3"}), confidence=0.95),
        Proposal(title="Work on the remote's working design", source_ids=frozenset(), confidence=0.6),
    ]
    overall = Score()
    score_meeting(proposals, GOLD, overall=overall, bands=None)
    assert (overall.proposals, overall.matched, overall.gold) == (2, 1, 2)
    assert (overall.precision, overall.recall, overall.f1) == (0.5, 0.5, 0.5)


# The loader


def test_the_loader_reads_the_meetings_of_one_part_as_chats(ami_slice: Path) -> None:
    data = load_ami(part="dev", path=ami_slice)
    assert [m.id for m in data.meetings] == ["ES9001a", "IB9002"]
    assert data.skipped == ["IB9003"]  # gold items but no transcript
    first = data.meetings[0]
    assert [u.id for u in first.utterances][:3] == ["ES9001a.u1", "ES9001a.u2", "ES9001a.u3"]
    assert [u.start for u in first.utterances] == sorted(u.start for u in first.utterances)
    assert first.roles == {"A": "project manager", "B": "industrial designer"}
    assert [(g.id, g.source_ids) for g in first.gold] == [
        ("g1", frozenset({"ES9001a.u3"})),
        ("g2", frozenset()),
    ]
    assert [m.id for m in load_ami(part="dev", path=ami_slice, limit=1).meetings] == ["ES9001a"]
    assert [m.id for m in load_ami(part="heldout", path=ami_slice).meetings] == ["TS9001a"]


# The prefilter on speech and the baseline's rule


def test_fillers_and_fragments_of_speech_are_dropped_and_requests_kept() -> None:
    assert noise_reason("Um, so, you know.") == "filler"
    assert noise_reason("Mm-hmm, mm-hmm.") == "filler"
    assert noise_reason("Oh, plastic.") == "fragment"
    assert noise_reason("Industrial Designer.") is None
    assert noise_reason("I'll look into that.") is None
    assert noise_reason("Can you join?") is None
    assert noise_reason("Yes, I think I can do it.") is None
    assert noise_reason("I'll do it") is None
    assert noise_reason("I can't, sorry.") == "filler"
    assert noise_reason("Хорошо") is None  # the English word rules leave other scripts alone


def test_the_baseline_takes_messages_that_look_like_requests() -> None:
    assert looks_like_request("Could you send the slides?")
    assert looks_like_request("You’ll be working on the user interface.")
    assert not looks_like_request("The buttons are too small.")


# The command


@pytest.fixture
def fake_agent(fake_openai: FakeOpenAI) -> str:
    provider = LLMProviderFactory(base_url=fake_openai.base_url, timeout_seconds=5, requests_per_minute=6000)
    agent = AgentFactory(name="Fake agent", provider=provider, model="fake-model", batch_token_budget=3000)
    AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
    return agent.name


def test_the_command_runs_the_pipeline_and_scores_agent_and_baseline(
    ami_slice: Path, fake_agent: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.default = propose_actionable  # one proposal per line saying please, crash or fix
    output = tmp_path / "report.json"
    call_command(
        "evaluate_extraction",
        *("--dataset", "ami", "--part", "dev", "--agent", fake_agent),
        *("--path", str(ami_slice), "--output", str(output)),
    )
    report = json.loads(output.read_text())
    assert report["meetings"] == 2
    assert report["meetings_skipped_without_transcript"] == ["IB9003"]
    # Agent: u3 (cites g1's source), u7 and IB9002.u2 (no gold item); g2 and g3 missed.
    agent = report["agent_scores"]
    assert (agent["proposals"], agent["matched"], agent["gold"]) == (3, 1, 3)
    assert (agent["precision"], agent["recall"], agent["f1"]) == (0.333, 0.333, 0.333)
    assert agent["bands"]["medium"]["proposals"] == 3  # the fake's confidence is 0.8
    assert agent["bands"]["medium"]["precision"] == 0.333
    assert agent["bands"]["high"]["proposals"] == agent["bands"]["low"]["proposals"] == 0
    # Baseline: u3 (cites g1), u5 ("I'll ...", close to g2's text), u7 and IB9002.u2 (misses).
    baseline = report["baseline_scores"]
    assert (baseline["proposals"], baseline["matched"], baseline["precision"]) == (4, 2, 0.5)
    assert baseline["recall"] == 0.667
    prefilter = report["prefilter"]
    assert (prefilter["messages"], prefilter["kept"]) == (10, 6)
    assert prefilter["dropped_by_reason"] == {"acknowledgement": 1, "filler": 3}
    assert (prefilter["gold_source_messages"], prefilter["gold_source_messages_kept"]) == (2, 2)
    tokens = report["prompt_tokens"]
    assert tokens["requests"] == 2
    assert tokens["prompt_lines"] == 6
    assert tokens["prompt_tokens"] > tokens["content_tokens"] > 0
    # The whole request is counted: both prompts, the response_format object, the chat format.
    parts = ("system_tokens", "user_tokens", "response_format_tokens", "chat_format_tokens")
    assert tokens["prompt_tokens"] == sum(tokens[part] for part in parts)
    assert tokens["response_format_tokens"] > 100
    assert tokens["ratio"] == round(tokens["prompt_tokens"] / tokens["content_tokens"], 3)
    assert report["targets"]["prompt_to_content_ratio"]["at_most"] == 2.0
    # And at each budget the product ships, planned without the LLM; the agent's is the run's.
    by_budget = {row["batch_token_budget"]: row for row in report["prompt_tokens_at_budgets"]}
    assert tuple(by_budget) == SHIPPED_BUDGETS == (800, 3000)
    assert by_budget[3000]["prompt_tokens"] == tokens["prompt_tokens"]
    assert AgentTaskAssignment.objects.get(agent__name=fake_agent).agent.batch_token_budget == 3000
    assert report["llm"]["calls"] == len(fake_openai.completion_requests()) == 2
    assert report["llm"]["prompt_tokens"] == 240
    assert not any("TS9001a" in r["messages"][-1]["content"] for r in fake_openai.completion_requests())
    # Nothing the evaluation wrote is left behind.
    for model in (Project, Chat, Message, AnalysisRun, TaskProposal):
        assert not model.objects.exists()


def test_the_email_intent_part_runs_the_prefilter_alone(tmp_path: Path) -> None:
    (tmp_path / "Ask0729-fixed.txt").write_text(
        "Yes\tCan you send me the report by Friday?\nYes\tPlease call me.\nNo\tOk thanks!\n"
        "No\tThe weather was nice in Houston.\n",
        encoding="utf-8",
    )
    (tmp_path / "testSet-qualifiedBatch-fixed.txt").write_text("Yes\tok\n", encoding="utf-8")
    output = tmp_path / "email.json"
    call_command(
        "evaluate_extraction",
        *("--dataset", "email-intent", "--part", "dev", "--path", str(tmp_path), "--output", str(output)),
    )
    report = json.loads(output.read_text())
    assert (report["sentences"], report["yes"], report["no"]) == (4, 2, 2)
    assert (report["yes_recall"], report["no_dropped_share"]) == (1.0, 0.5)
    assert report["targets"]["yes_recall"]["met"]
