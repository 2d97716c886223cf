from celery import shared_task

from agents import services


@shared_task(name="agents.check_provider_health")
def check_provider_health_task(provider_id: int) -> str:
    """Check a provider's health by id (keys never travel in task arguments)."""
    return services.check_provider_health(provider_id=provider_id).health
