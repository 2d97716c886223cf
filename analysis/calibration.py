"""Confidence bands calibrated against a project's own reviews.

An agent's confidence means nothing until reviewers say what it means. Each time a run
closes, the reviewed proposals of the project's closed runs are read per agent: approval rate
by confidence decile and by band, with counts (a reliability table). Once an agent has
`CALIBRATION_MIN_REVIEWS` decided reviews (approved or rejected; merges say nothing of a
proposal's worth) on the project, its band thresholds are set by `calibrated_bands`:

- high: above the lowest threshold whose proposals above it were approved at least 90% of
  the time (`HIGH_APPROVAL`), with at least `MIN_BAND_REVIEWS` of them;
- low: below the highest threshold whose proposals below it were approved less than 50% of
  the time (`LOW_APPROVAL`), with at least `MIN_BAND_REVIEWS` of them;
- medium between. Thresholds are tried on a grid of 0.05 from 0.05 to 0.95; with no threshold
  meeting a rule, that band is empty (high above 1.0, low below 0.0). The rule is monotone:
  low never exceeds high.

Until then the fixed bands hold (high above 0.9, low below 0.7). The thresholds are stored
on the project per agent (`Project.band_calibration`), snapshotted on each run that starts
(`config_snapshot["projects"][i]["bands"]`), and a proposal's band is set from its run's
thresholds when it is saved.

The band error says how far bands break their promise: the share-weighted distance of each
band's observed approval rate from the range it promises (fixed: high > 0.9, medium 0.7–0.9,
low < 0.7; calibrated: high >= 0.9, medium 0.5–0.9, low < 0.5). It is given for the fixed and
the calibrated bands of the same reviews, beside the expected calibration error (ECE) of the
confidences themselves over deciles.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from projects.models import Project
from proposals.models import FIXED_BANDS, Bands, ReviewEvent, TaskProposal, confidence_band

HIGH_APPROVAL = 0.9
LOW_APPROVAL = 0.5
MIN_BAND_REVIEWS = 10
GRID = [round(0.05 * i, 2) for i in range(1, 20)]
# The newest reviews that count: a project's agent, prompt and team change over time.
MAX_REVIEWS = 2000


@dataclass(frozen=True)
class Review:
    confidence: float
    approved: bool


def _rate(reviews: Sequence[Review]) -> float | None:
    return sum(r.approved for r in reviews) / len(reviews) if reviews else None


def calibrated_bands(reviews: Sequence[Review]) -> Bands:
    """The thresholds of the module's rule for these decided reviews (see the docstring)."""
    high = 1.0
    for threshold in GRID:
        above = [r for r in reviews if r.confidence > threshold]
        if len(above) >= MIN_BAND_REVIEWS and (_rate(above) or 0) >= HIGH_APPROVAL:
            high = threshold
            break
    low = 0.0
    for threshold in reversed(GRID):
        below = [r for r in reviews if r.confidence < threshold]
        if len(below) >= MIN_BAND_REVIEWS and (_rate(below) or 1) < LOW_APPROVAL:
            low = threshold
            break
    return Bands(high=high, low=min(low, high))


def deciles(reviews: Sequence[Review]) -> list[dict[str, object]]:
    """The reliability table: per tenth of confidence, reviews, approved, approval rate and
    mean confidence (None where a tenth has none)."""
    rows = []
    for i in range(10):
        start, end = i / 10, (i + 1) / 10
        inside = [r for r in reviews if start <= r.confidence < end or (i == 9 and r.confidence == 1.0)]
        rate = _rate(inside)
        rows.append(
            {
                "range": f"{start:.1f}-{end:.1f}",
                "reviews": len(inside),
                "approved": sum(r.approved for r in inside),
                "approval_rate": round(rate, 3) if rate is not None else None,
                "mean_confidence": round(sum(r.confidence for r in inside) / len(inside), 3)
                if inside
                else None,
            }
        )
    return rows


def expected_calibration_error(reviews: Sequence[Review]) -> float | None:
    """ECE over deciles: the review-weighted gap between mean confidence and approval rate."""
    if not reviews:
        return None
    total = 0.0
    for row in deciles(reviews):
        if row["reviews"]:
            gap = abs(float(row["approval_rate"]) - float(row["mean_confidence"]))  # type: ignore[arg-type]
            total += int(row["reviews"]) * gap  # type: ignore[call-overload]
    return round(total / len(reviews), 3)


# What each band promises about its approval rate, fixed and calibrated: [from, to).
PROMISES = {
    "fixed": {"high": (0.9, 1.01), "medium": (0.7, 0.9), "low": (0.0, 0.7)},
    "calibrated": {
        "high": (HIGH_APPROVAL, 1.01),
        "medium": (LOW_APPROVAL, HIGH_APPROVAL),
        "low": (0.0, LOW_APPROVAL),
    },
}


def band_table(reviews: Sequence[Review], bands: Bands, promises: dict[str, tuple[float, float]]) -> dict:
    """Per band: reviews, approved, approval rate; and the band error of these bands."""
    table: dict[str, dict[str, object]] = {}
    error = 0.0
    for name in (TaskProposal.Band.HIGH, TaskProposal.Band.MEDIUM, TaskProposal.Band.LOW):
        inside = [r for r in reviews if confidence_band(r.confidence, bands) == name]
        rate = _rate(inside)
        table[name] = {
            "reviews": len(inside),
            "approved": sum(r.approved for r in inside),
            "approval_rate": round(rate, 3) if rate is not None else None,
        }
        if rate is not None:
            start, end = promises[name]
            error += len(inside) * (start - rate if rate < start else rate - end if rate >= end else 0.0)
    return {"bands": table, "band_error": round(error / len(reviews), 3) if reviews else None}


def calibration(reviews: Sequence[Review], *, minimum: int) -> dict[str, object]:
    """Everything the project page and the API show of one agent on one project."""
    calibrated = len(reviews) >= minimum
    bands = calibrated_bands(reviews) if calibrated else FIXED_BANDS
    fixed = band_table(reviews, FIXED_BANDS, PROMISES["fixed"])
    return {
        "reviews": len(reviews),
        "minimum_reviews": minimum,
        "calibrated": calibrated,
        "high": bands.high,
        "low": bands.low,
        "ece": expected_calibration_error(reviews),
        "deciles": deciles(reviews),
        "fixed": fixed,
        "current": band_table(reviews, bands, PROMISES["calibrated"]) if calibrated else fixed,
    }


def decided_reviews(*, project_id: int, agent_id: int) -> list[Review]:
    """The newest `MAX_REVIEWS` proposals of the project's closed runs by the agent that a
    reviewer approved or rejected (not the system's auto-approvals)."""
    rows = (
        TaskProposal.objects.filter(
            project_id=project_id,
            run__assignment__agent_id=agent_id,
            run__status="closed",
            status__in=[TaskProposal.Status.APPROVED, TaskProposal.Status.REJECTED],
        )
        # The system's own approvals say nothing of what reviewers think (proposals.services.auto).
        .exclude(review_action=ReviewEvent.Action.AUTO_APPROVE)
        .order_by("-reviewed_at", "-pk")
        .values_list("confidence", "status")[:MAX_REVIEWS]
    )
    return [Review(confidence, status == TaskProposal.Status.APPROVED) for confidence, status in rows]


def recalibrate(
    *, project_ids: Iterable[int], agent_id: int, agent_name: str, now: datetime | None = None
) -> None:
    """Recompute the agent's calibration on each project and store it on the project."""
    minimum = settings.CALIBRATION_MIN_REVIEWS
    for project_id in project_ids:
        figures = calibration(decided_reviews(project_id=project_id, agent_id=agent_id), minimum=minimum)
        with transaction.atomic():
            project = Project.objects.select_for_update().get(pk=project_id)
            agents = dict(project.band_calibration.get("agents", {}))
            agents[str(agent_id)] = {
                "agent": agent_name,
                "computed_at": (now or timezone.now()).isoformat(),
                **figures,
            }
            Project.objects.filter(pk=project_id).update(band_calibration={"agents": agents})


def bands_for(project: Project, agent_id: int) -> Bands:
    """The thresholds in force for the agent's proposals on the project."""
    figures = project.band_calibration.get("agents", {}).get(str(agent_id))
    if not figures or not figures.get("calibrated"):
        return FIXED_BANDS
    return Bands(high=float(figures["high"]), low=float(figures["low"]))
