"""The default task config, "Extract tasks": what a new installation asks of the LLM out of the box.

Created by the data migration `0002_default_task_config` and by `load_demo`; an admin
may edit the stored row, these constants are only its first version.
"""

from typing import Any

DEFAULT_TASK_CONFIG_NAME = "Extract tasks"

DEFAULT_TASK_CONFIG_DESCRIPTION = (
    "Reads a batch of team chat messages and proposes the actionable tasks in them "
    "(bugs, feature requests, improvements, open questions, chores), each citing the "
    "messages it comes from, for a reviewer to approve."
)

DEFAULT_INSTRUCTIONS = """\
Turn a software team's chat into task proposals. A person reviews each one, so prefer a few \
precise proposals to many vague ones.

A task is something someone must do: a bug (broken; keep platform, version, steps), a feature \
(new), an improvement (works, should work better), a question (to answer or decide) or a chore \
(docs, releases, dependencies). Not tasks: greetings, thanks, acknowledgements, social talk, \
items the chat shows done. One proposal per item, merging its messages; an empty list when \
there is none.

- title: imperative, at most 12 words, in the project's language; description: what and why, \
only facts from the chat
- project: a slug from the context
- assignee: the team member who took it on or was asked to, as named in the chat, else null
- priority: critical (outage, data loss, release blocker), high (crash, regression), low \
(nice-to-have), else medium
- tags: a few lowercase keywords
- due_date: YYYY-MM-DD when a deadline is stated or implied, else null
- confidence: above 0.9 for an explicit request or commitment, 0.7 to 0.9 for a likely task, \
below 0.7 for a guess
- reasoning: one sentence quoting the key words
- recommendation: new_task; update_existing or merge when it continues a known item; reject \
when it should not become a task
- source_message_ids: the ids of every message it relies on
"""

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}

# OpenAI strict structured output: every property required, no additional properties,
# nullable fields typed ["<type>", "null"]. No descriptions: the instructions say what each
# field holds, and the schema is sent with every request.
DEFAULT_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "proposals": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "project": {"type": "string"},
                    "assignee": _NULLABLE_STRING,
                    "priority": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                    "category": {
                        "type": "string",
                        "enum": ["bug", "feature", "improvement", "question", "chore"],
                    },
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "due_date": _NULLABLE_STRING,
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "reasoning": {"type": "string"},
                    "recommendation": {
                        "type": "string",
                        "enum": ["new_task", "update_existing", "merge", "reject"],
                    },
                    "source_message_ids": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 1,
                    },
                },
                "required": [
                    "title",
                    "description",
                    "project",
                    "assignee",
                    "priority",
                    "category",
                    "tags",
                    "due_date",
                    "confidence",
                    "reasoning",
                    "recommendation",
                    "source_message_ids",
                ],
                "additionalProperties": False,
            },
        }
    },
    "required": ["proposals"],
    "additionalProperties": False,
}


# A second task config for models of a few hundred million parameters (the embedded model):
# the same `proposals` the pipeline reads, with only the fields such a model fills well, and
# bounds the server's grammar enforces so that every answer ends well inside its output limit
# (at most 4 items of one source each, titles of 8 to 60 characters, confidence in three
# steps). The pipeline fills the rest: the run's only project, medium priority, no tags.
# Measured on the demo and AMI dev (README, "Quality"): without these bounds a 135M model
# repeats one item until the output limit; with them every answer was schema-valid. No worked
# example in the instructions: such models copy it into every answer. No line format either:
# `agents.prompts.DATA_RULES`, sent with every config, gives it.
SMALL_TASK_CONFIG_NAME = "Extract tasks (small models)"

SMALL_TASK_CONFIG_DESCRIPTION = (
    "For small local models: the messages that ask for or promise work, each with a short "
    "title, an assignee and a confidence in three steps. Answers in the same proposals shape."
)

SMALL_INSTRUCTIONS = """\
Find the messages of a team chat where someone asks for work or promises to do work. For each \
one write:
- source_message_ids: that message's number
- title: a new task title of 3 to 8 words starting with a verb (Fix, Add, Check, Update, \
Write, Review, Decide), in your own words
- assignee: the first name of the person who will do it, or null
- confidence: 0.95 for a clear request or promise, 0.8 for a likely one, 0.5 for a guess
Skip greetings, thanks, jokes and status updates. Never give the same message twice.\
"""

SMALL_MAX_PROPOSALS = 4

SMALL_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "proposals": {
            "type": "array",
            "maxItems": SMALL_MAX_PROPOSALS,
            "items": {
                "type": "object",
                "properties": {
                    "source_message_ids": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1},
                        "minItems": 1,
                        "maxItems": 1,
                    },
                    "title": {"type": "string", "minLength": 8, "maxLength": 60},
                    "assignee": {"type": ["string", "null"], "maxLength": 20},
                    "confidence": {"type": "number", "enum": [0.5, 0.8, 0.95]},
                },
                "required": ["source_message_ids", "title", "assignee", "confidence"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["proposals"],
    "additionalProperties": False,
}
