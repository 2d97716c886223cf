"""The small models' task config without the line format its first instructions repeated
(`agents.prompts.DATA_RULES` gives it with every config), written over the stored "Extract
tasks (small models)" config only where its instructions are still the first version below,
unedited; an edited config is left as its admin made it. A database without that config (the
demo not loaded) gets it from `load_demo`, already short."""

from django.db import migrations

from agents.defaults import SMALL_TASK_CONFIG_NAME

FIRST_SMALL_INSTRUCTIONS = """\
Read a team chat. Each line is `#number author: text`.
Find the messages where someone asks for work or promises to do work. For each one write:
- source_message_ids: that message's number
- title: a new short task title of 3 to 8 words that starts with a verb (Fix, Add, Check, \
Update, Write, Review, Decide), in your own words
- assignee: the first name of the person who will do it, or null
- confidence: 0.95 for a clear request or promise, 0.8 for a likely one, 0.5 for a guess
Skip greetings, thanks, jokes and status updates. Never give the same message twice.\
"""

# The text it becomes, frozen here so that a later change of the default does not rewrite
# what this migration did.
SHORTER_SMALL_INSTRUCTIONS = """\
Find the messages of a team chat where someone asks for work or promises to do work. For each \
one write:
- source_message_ids: that message's number
- title: a new task title of 3 to 8 words starting with a verb (Fix, Add, Check, Update, \
Write, Review, Decide), in your own words
- assignee: the first name of the person who will do it, or null
- confidence: 0.95 for a clear request or promise, 0.8 for a likely one, 0.5 for a guess
Skip greetings, thanks, jokes and status updates. Never give the same message twice.\
"""


def shorten_small_task_config(apps, schema_editor):
    TaskConfig = apps.get_model("agents", "TaskConfig")
    configs = TaskConfig.objects.using(schema_editor.connection.alias)
    configs.filter(name=SMALL_TASK_CONFIG_NAME, instructions=FIRST_SMALL_INSTRUCTIONS).update(
        instructions=SHORTER_SMALL_INSTRUCTIONS
    )


class Migration(migrations.Migration):
    dependencies = [("agents", "0005_proposal_caps")]

    operations = [migrations.RunPython(shorten_small_task_config, migrations.RunPython.noop)]
