"""Cron schedules of a project's analysis runs, read in one place.

`projects.services.clean_schedule` checks a schedule when a configuration is saved and
`analysis.services.start_scheduled_runs` asks whether a run is due, both through
`parse_schedule`: a schedule that was accepted is one the scheduler can read.
"""

from celery.schedules import ParseException, crontab

from tasktracker.exceptions import DomainError


def parse_schedule(expression: str) -> crontab:
    """A five-field cron expression (minute hour day-of-month month day-of-week), as Celery
    beat's own `crontab` reads it; fields are separated by any whitespace.

    Raises `DomainError(code="invalid_schedule")` with a sentence for a person: the code is
    the one `projects.services.error_field` maps to the configuration's `schedule` field.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise DomainError(
            f"“{expression}” is not a five-field cron expression; give minute hour day-of-month "
            "month day-of-week, e.g. 0 9 * * 1-5.",
            code="invalid_schedule",
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except (ValueError, ParseException) as exc:
        raise DomainError(
            f"“{expression}” is not a valid cron expression: {exc}", code="invalid_schedule"
        ) from exc
