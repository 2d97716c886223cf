"""The embedded model: its speed on this machine, and a newcomer's first run through `make run`.

    .venv/bin/python bench/embedded_llm.py [--llm-url http://127.0.0.1:8089/v1]
        [--app-url http://127.0.0.1:8000] [--user alice --password demo-pass-123] [--skip-run] [--smoke]

Needs a healthy `make run` (the embedded model, the web server and a worker). Two parts:

1. Speed: one chat completion of a demo-sized prompt (about 600 tokens, 128 tokens out, no
   grammar), alone and then two at once (the server's two slots), read from llama.cpp's own
   `timings` (prompt and generation tokens per second).
2. The first run, as a newcomer makes it: log in, open New run, submit its defaults, and follow
   the run's state until it ends. Prints the time to the first proposal and to the end, the
   batches valid (done) and failed, the proposals, and three checks of their titles: their
   length in words, titles repeated within the run, and titles copied from a message (a title
   of 4 words or more found verbatim in one of its source messages). Titles and sources are
   read from the run's database (this process uses the same settings as `make run`).

Goals for a first run out of the box: the run completes within 120 s, its first
proposal within 60 s, at least 90% of batches valid, at least 3 proposals. It reports, it does
not gate: the exit status is 0 unless the run could not be made. The load average is printed
at the start and the end. `--smoke` needs no model: it runs the title checks and the goals'
report on a canned run, so that CI sees the bench still runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tasktracker.settings")

PROMPT_LINES = [
    "Heads up: login crashes on Android 14 when biometric unlock is on, 100% repro on my Pixel 8",
    "Ouch, that's a release blocker for 3.8. Bob can you take it?",
    "On it. Looks like the keystore callback fires after the activity is destroyed",
    "Checkout on iPhone SE: the Pay button is cut off at the bottom",
    "ugh, that's the fixed-height container again. I'll fix it today",
    "Can someone update the release checklist with the new signing steps?",
    "Also, the staging API is really slow today, some requests take 10 s",
]


def _csrf(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    if match is None:
        raise SystemExit("No CSRF token on the page: is this Tasktracker?")
    return match.group(1)


def completion(llm_url: str, model: str, prompt: str) -> dict[str, Any]:
    response = httpx.post(
        f"{llm_url}/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 128,
            "temperature": 0,
            "ignore_eos": True,  # always 128 tokens out: comparable generation speed
        },
        timeout=300,
    )
    response.raise_for_status()
    return response.json()


def speed(llm_url: str) -> None:
    models = httpx.get(f"{llm_url}/models", timeout=10).json()["data"]
    model = models[0]["id"]
    prompt = "Summarise this team chat in one line.\n" + "\n".join(
        f"#{i} {line}" for i, line in enumerate(PROMPT_LINES * 6, 1)
    )
    completion(llm_url, model, "warm up")
    print(f"Speed of {model} at {llm_url} (llama.cpp's timings):")
    for parallel in (1, 2):
        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            # A different first line each, so no request reuses another's cached prompt.
            answers = list(pool.map(lambda i: completion(llm_url, model, f"[{time.time()}-{i}]\n{prompt}"),
                                    range(parallel)))  # fmt: skip
        wall = time.monotonic() - started
        timings = [a["timings"] for a in answers]
        prompt_tokens = sum(t["prompt_n"] for t in timings)
        generated = sum(t["predicted_n"] for t in timings)
        prompt_speed = statistics.mean(t["prompt_per_second"] for t in timings)
        generation_speed = statistics.mean(t["predicted_per_second"] for t in timings)
        print(
            f"  {parallel} request(s) at once: prompt {prompt_speed:.0f} tok/s each,"
            f" generation {generation_speed:.1f} tok/s each;"
            f" {prompt_tokens} prompt + {generated} generated tokens in {wall:.1f} s wall"
            f" ({generated / wall:.1f} generated tok/s in all)"
        )


def first_run(app_url: str, user: str, password: str) -> int:
    client = httpx.Client(base_url=app_url, follow_redirects=True, timeout=30)
    login = client.get("/accounts/login/")
    client.post(
        "/accounts/login/",
        data={"username": user, "password": password, "csrfmiddlewaretoken": _csrf(login.text)},
    )
    page = client.get("/runs/new/")
    if "window_start" not in page.text:
        raise SystemExit(f"{user} cannot open New run ({page.status_code}): check the login.")
    data: dict[str, Any] = {"csrfmiddlewaretoken": _csrf(page.text)}
    for tag in re.findall(r"<input[^>]*>", page.text):
        name, value = re.search(r'name="([^"]+)"', tag), re.search(r'value="([^"]*)"', tag)
        if name is None or name.group(1) == "csrfmiddlewaretoken":
            continue
        if 'type="checkbox"' in tag and "checked" not in tag:
            continue
        data.setdefault(name.group(1), []).append(value.group(1) if value else "")
    chosen = re.search(r'<option value="(\d+)" selected', page.text)
    data["assignment"] = chosen.group(1) if chosen else ""
    print(f"New run's defaults: window {data['window_start'][0]} to {data['window_end'][0]}, "
          f"projects {data.get('projects')}, assignment {data['assignment'] or 'none'}")  # fmt: skip
    started = time.monotonic()
    response = client.post("/runs/new/", data=data)
    match = re.search(r"/runs/(\d+)/$", str(response.url))
    if match is None:
        raise SystemExit(f"The default New run was refused ({response.status_code}).")
    run_id = int(match.group(1))
    first_proposal = None
    while True:
        state = client.get(f"/runs/{run_id}/state/").json()
        if first_proposal is None and state["proposals_created"]:
            first_proposal = time.monotonic() - started
        if state["status"] not in ("pending", "running"):
            break
        time.sleep(0.5)
    total = time.monotonic() - started
    report(run_id, state, total, first_proposal)
    return 0


def copied(title: str, sources: list[str]) -> bool:
    words = title.casefold().split()
    needle = " ".join(words)
    return len(words) >= 4 and any(needle in " ".join(text.casefold().split()) for text in sources)


def report(run_id: int, state: dict[str, Any], total: float, first_proposal: float | None) -> None:
    import django  # after the HTTP part; the same settings as make run's

    django.setup()
    from proposals.models import TaskProposal

    proposals = list(
        TaskProposal.objects.filter(run_id=run_id).prefetch_related("source_messages").order_by("pk")
    )
    batches = state["batches_total"]
    valid = state["batches_done"]
    titles = [p.title for p in proposals]
    folded = [t.casefold() for t in titles]
    repeated = len(folded) - len(set(folded))
    copies = [p.title for p in proposals if copied(p.title, [m.text for m in p.source_messages.all()])]
    lengths = [len(t.split()) for t in titles]
    print(
        f"Run {run_id}: {state['status']} in {total:.1f} s; first proposal after "
        f"{'-' if first_proposal is None else f'{first_proposal:.1f} s'}; batches {valid} valid of {batches} "
        f"({state['batches_failed']} failed); {len(proposals)} proposals; LLM {state['llm_calls']} calls, "
        f"{state['prompt_tokens']} prompt + {state['completion_tokens']} completion tokens, "
        f"{state['llm_seconds']:.1f} s in calls"
    )
    if titles:
        print(
            f"Titles: {statistics.median(lengths):.0f} words median ({min(lengths)}-{max(lengths)}), "
            f"{repeated} repeated within the run, {len(copies)} copied from a message"
        )
    for proposal in proposals:
        source = "; ".join(m.text[:60] for m in proposal.source_messages.all())
        print(f"  {proposal.confidence:.2f} {proposal.title!r} <- {source!r}")
    print_goals(state, total, first_proposal, len(proposals))


def print_goals(state: dict[str, Any], total: float, first_proposal: float | None, proposals: int) -> None:
    batches, valid = state["batches_total"], state["batches_done"]
    goals = [
        ("run completes within 120 s", state["status"] == "completed" and total <= 120),
        ("first proposal within 60 s", first_proposal is not None and first_proposal <= 60),
        ("at least 90% of batches valid", batches > 0 and valid >= 0.9 * batches),
        ("at least 3 proposals", proposals >= 3),
    ]
    for name, met in goals:
        print(f"{'PASS' if met else 'FAIL'}: {name}")
    print(f"Load average: {_load()} at the end")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def smoke() -> int:
    """No model and no server: the checks and the report's goals on a canned run, so that CI
    sees the bench import and run (the real one needs `make run` and minutes of a CPU model)."""
    sources = ["Can someone update the release checklist with the new signing steps?"]
    assert copied("update the release checklist", sources)
    assert not copied("Update signing steps", sources)
    state = {"status": "completed", "batches_total": 2, "batches_done": 2}
    print("Smoke: a canned run of 2 batches, no model")
    print_goals(state, total=1.0, first_proposal=0.5, proposals=3)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llm-url", default=f"http://127.0.0.1:{os.environ.get('EMBEDDED_LLM_PORT', '8089')}/v1"
    )
    parser.add_argument("--app-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--password", default="demo-pass-123")
    parser.add_argument("--skip-run", action="store_true", help="Measure the model's speed only.")
    parser.add_argument("--smoke", action="store_true", help="No model: the checks on a canned run (CI).")
    args = parser.parse_args()
    print(f"Load average: {_load()} on {os.cpu_count()} cores")
    if args.smoke:
        return smoke()
    speed(args.llm_url)
    return 0 if args.skip_run else first_run(args.app_url, args.user, args.password)


if __name__ == "__main__":
    sys.exit(main())
