"""`manage.py evaluate_extraction`: extraction measured on annotated data (README, "Quality").

    manage.py evaluate_extraction --dataset ami --part dev --agent "Offline SmolLM2" --limit 4
    manage.py evaluate_extraction --dataset ami --part dev
    manage.py evaluate_extraction --dataset email-intent --part dev

Without `--agent`, the AMI part's prefilter alone, per fold (no LLM). Prints the figures,
with the prompt overhead (the whole request's tokens over the messages' own) at each batch
token budget the product ships or `--budgets` names, and the prefilter per fold, and writes
them as JSON (`--output`). The held-out part is read only with `--part heldout`: report it, never
tune on it.
"""

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.defaults import DEFAULT_TASK_CONFIG_NAME
from agents.models import AgentTaskAssignment
from analysis.evaluation import (
    AMI_PATH,
    EMAIL_INTENT_DIR,
    HELDOUT,
    PARTS,
    SHIPPED_BUDGETS,
    EvaluationError,
    MeetingOutcome,
    as_json,
    evaluate_ami,
    evaluate_email_intent,
    prefilter_folds,
    prompt_overhead_at_budgets,
)
from tasktracker.exceptions import DomainError


class Command(BaseCommand):
    help = (
        "Measure task extraction on the AMI meeting action items (the real pipeline and an agent) or "
        "the prefilter on the Enron email-intent sentences."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", choices=["ami", "email-intent"], required=True)
        parser.add_argument("--part", choices=PARTS, required=True, help="dev to tune on, heldout to report.")
        parser.add_argument(
            "--agent",
            help='The agent\'s name (AMI only), e.g. "Offline SmolLM2"; without it, the prefilter per fold.',
        )
        parser.add_argument("--limit", type=int, default=None, help="The first N meetings only (AMI).")
        parser.add_argument(
            "--budgets",
            type=_budgets,
            default=SHIPPED_BUDGETS,
            help="Batch token budgets, comma-separated, at which the prompt overhead is also shown (AMI; "
            f"no LLM call); default the shipped ones, {','.join(map(str, SHIPPED_BUDGETS))}.",
        )
        parser.add_argument(
            "--path",
            type=Path,
            default=None,
            help=f"The AMI .jsonl.gz file (default {AMI_PATH}) or the email-intent directory "
            f"(default {EMAIL_INTENT_DIR}).",
        )
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Where the JSON report goes (default .run/evaluate_extraction-<dataset>-<part>.json).",
        )

    def handle(self, *args: Any, dataset: str, part: str, **options: Any) -> None:
        if part == HELDOUT:
            self.stdout.write(self.style.WARNING("Held-out part: report these figures, never tune on them."))
        try:
            if dataset == "email-intent":
                report = evaluate_email_intent(part=part, directory=options["path"] or EMAIL_INTENT_DIR)
                lines = format_email_intent_report(report)
            elif not options["agent"]:
                # The prefilter alone, per fold: no agent, no LLM, no Redis.
                folds = prefilter_folds(part=part, path=options["path"] or AMI_PATH)
                report = {"dataset": "ami", "part": part, "prefilter_folds": folds}
                lines = format_folds(folds)
            else:
                assignment = self.assignment(options["agent"])
                report = evaluate_ami(
                    part=part,
                    assignment=assignment,
                    path=options["path"] or AMI_PATH,
                    limit=options["limit"],
                    progress=self.progress,
                )
                report["prompt_tokens_at_budgets"] = prompt_overhead_at_budgets(
                    part=part,
                    assignment=assignment,
                    budgets=options["budgets"],
                    path=options["path"] or AMI_PATH,
                    limit=options["limit"],
                )
                report["prefilter_folds"] = prefilter_folds(part=part, path=options["path"] or AMI_PATH)
                lines = itertools.chain(format_ami_report(report), format_folds(report["prefilter_folds"]))
        except (EvaluationError, DomainError) as exc:
            # A switched-off agent or provider is refused by `start_run` with a DomainError.
            raise CommandError(str(exc)) from exc
        for line in lines:
            self.stdout.write(line)
        output = (
            options["output"]
            or Path(settings.BASE_DIR) / ".run" / f"evaluate_extraction-{dataset}-{part}.json"
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(as_json(report) + "\n", encoding="utf-8")
        self.stdout.write(f"Written to {output}")

    def assignment(self, name: str) -> AgentTaskAssignment:
        """The agent's active assignment, the default task config's when it has several."""
        assignments = AgentTaskAssignment.objects.filter(agent__name=name, is_active=True).select_related(
            "agent__provider", "task_config"
        )
        assignment = (
            assignments.filter(task_config__name=DEFAULT_TASK_CONFIG_NAME).first() or assignments.first()
        )
        if assignment is None:
            raise CommandError(f'There is no agent "{name}" with an active task config.')
        try:
            # The gateway's per-provider limits live in Redis: fail here rather than in every batch.
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            raise CommandError(
                f"The LLM gateway needs Redis at {settings.REDIS_URL} ({exc}): start `make run`, "
                "or set REDIS_URL."
            ) from exc
        return assignment

    def progress(self, outcome: MeetingOutcome) -> None:
        figures = outcome.figures
        self.stderr.write(
            f"{outcome.meeting_id}: {figures['messages']} messages, {figures['kept']} kept, "
            f"{figures['batches']} batches ({figures['batches_failed']} failed), "
            f"{len(outcome.proposals)} proposals, {figures['wall_seconds']:.1f} s"
        )


def _budgets(text: str) -> tuple[int, ...]:
    try:
        budgets = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token counts.") from None
    if not budgets or min(budgets) < 1:
        raise argparse.ArgumentTypeError("Give one budget or more, each a positive number of tokens.")
    return budgets


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _targets(report: dict[str, Any]) -> Iterator[str]:
    for name, target in report["targets"].items():
        bound = f">= {target['at_least']}" if target["at_least"] is not None else f"<= {target['at_most']}"
        verdict = "met" if target["met"] else "NOT met"
        yield f"Target {name.replace('_', ' ')} {bound}: {verdict} ({_figure(target['value'], 4)})"


def format_ami_report(report: dict[str, Any]) -> Iterator[str]:
    scores, prefilter, tokens, llm = (
        report[k] for k in ("agent_scores", "prefilter", "prompt_tokens", "llm")
    )
    yield (
        f"AMI {report['part']} part: {report['meetings']} meetings, {report['gold_items']} gold action "
        f'items; agent "{report["agent"]}" ({report["model"]}, '
        f"batches of {report['batch_token_budget']} tokens)"
    )
    if report["meetings_skipped_without_transcript"]:
        yield f"  skipped, no transcript: {', '.join(report['meetings_skipped_without_transcript'])}"
    yield f"{'':26}{'proposals':>10}{'matched':>9}{'precision':>11}{'recall':>8}{'F1':>7}{'mean conf':>11}"

    def row(name: str, s: dict[str, Any], confidence: str = "") -> str:
        return (
            f"{name:26}{s['proposals']:>10}{s['matched']:>9}{_figure(s['precision']):>11}"
            f"{_figure(s['recall']):>8}{_figure(s['f1']):>7}{confidence:>11}"
        )

    yield row("agent", scores)
    for band, s in scores["bands"].items():
        yield row(f"  {band} ({s['confidence_range']})", s, _figure(s["mean_confidence"], 2))
    yield row("baseline (request words)", report["baseline_scores"])
    yield (
        f"Prefilter: {prefilter['messages']} messages, {prefilter['kept']} kept, "
        f"{_percent(prefilter['dropped_share'])} dropped ({_reasons(prefilter['dropped_by_reason'])}); "
        f"gold source messages kept: {prefilter['gold_source_messages_kept']} of "
        f"{prefilter['gold_source_messages']} ({_percent(prefilter['gold_source_kept_share'])})"
    )
    yield (
        f"Prompt tokens per kept message: {_figure(tokens['prompt_per_kept_message'], 1)} for "
        f"{_figure(tokens['content_per_kept_message'], 1)} of content, {_figure(tokens['ratio'], 2)}x over "
        f"{tokens['requests']} requests ({tokens['counted_with']})"
    )
    yield from format_request_tokens(report.get("prompt_tokens_at_budgets", []))
    yield (
        f"LLM: {llm['calls']} calls, {llm['prompt_tokens']} prompt + {llm['completion_tokens']} completion "
        f"tokens, cost {llm['cost']}, {llm['llm_seconds']} s in calls, {llm['wall_seconds']} s wall; "
        f"{llm['batches']} batches, failed: {_reasons(llm['batches_failed'])}"
    )
    yield from _targets(report)


def format_folds(folds: list[dict[str, Any]]) -> Iterator[str]:
    """The prefilter per fold (`prefilter_folds`), with the fold targets."""
    yield "Prefilter per fold (no LLM; a rule tuned on one fold must hold on the others):"
    yield f"{'fold':>16}{'meetings':>9}{'messages':>9}{'dropped':>9}{'gold sources kept':>19}  targets"
    for fold in folds:
        kept = (
            f"{fold['gold_source_messages_kept']}/{fold['gold_source_messages']} "
            f"({_percent(fold['gold_source_kept_share'])})"
            if fold["gold_source_messages"]
            else "none linked"
        )
        verdicts = ", ".join(
            f"{name.replace('_', ' ')} >= {target['at_least']}: {'met' if target['met'] else 'NOT met'}"
            for name, target in fold["targets"].items()
        )
        yield (
            f"{fold['fold']:>16}{fold['meetings']:>9}{fold['messages']:>9}"
            f"{_percent(fold['dropped_share']):>9}{kept:>19}  {verdicts}"
        )
        yield f"{'':>16} dropped by reason: {_reasons(fold['dropped_by_reason'])}"


def format_request_tokens(rows: list[dict[str, Any]]) -> Iterator[str]:
    """The prompt overhead at each budget: where a request's tokens go, per request."""
    if not rows:
        return
    yield (
        "Prompt overhead by budget (per request: system, user, response_format, chat format; "
        "the messages' content; whole request over content):"
    )
    yield (
        f"{'budget':>8}{'requests':>9}{'system':>8}{'user':>7}{'format':>8}{'chat':>6}"
        f"{'content':>9}{'ratio':>7}"
    )
    for row in rows:
        n = row["requests"] or 1
        yield (
            f"{row['batch_token_budget']:>8}{row['requests']:>9}{row['system_tokens'] / n:>8.0f}"
            f"{row['user_tokens'] / n:>7.0f}{row['response_format_tokens'] / n:>8.0f}"
            f"{row['chat_format_tokens'] / n:>6.0f}{row['content_tokens'] / n:>9.0f}"
            f"{_figure(row['ratio'], 2):>7}"
        )


def format_email_intent_report(report: dict[str, Any]) -> Iterator[str]:
    yield (
        f"Email intent, {report['part']} part: {report['sentences']} sentences "
        f"({report['yes']} Yes, {report['no']} No)"
    )
    yield f"  Yes sentences the prefilter keeps: {report['yes_kept']} ({_percent(report['yes_recall'])})"
    yield f"  No sentences it drops: {report['no_dropped']} ({_percent(report['no_dropped_share'])})"
    yield f"  dropped by reason: {_reasons(report['dropped_by_reason'])}"
    yield from _targets(report)
