"""The delivery log kept the first 500 characters of a failed answer's body in `error`, which
let a lead read what an internal server answered (see `projects.webhooks`). Deliveries now
keep a short reason; the bodies already logged are replaced by the same reason."""

from django.db import migrations


def forget_answer_bodies(apps, schema_editor):
    WebhookDelivery = apps.get_model("projects", "WebhookDelivery")
    answered = (
        WebhookDelivery.objects.using(schema_editor.connection.alias)
        .filter(response_status__isnull=False)
        .exclude(error="")
    )
    for status in answered.values_list("response_status", flat=True).distinct().order_by():
        answered.filter(response_status=status).update(error=f"HTTP {status}")


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0003_reviewer_role"),
    ]

    operations = [
        # Going back keeps the reasons: the bodies are gone for good.
        migrations.RunPython(forget_answer_bodies, migrations.RunPython.noop),
    ]
