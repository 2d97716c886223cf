"""What an LLM call gives back, and how it failed: the gateway's types, without the gateway.

Kept apart from `agents.llm` so that code which only reads a call's outcome (the services
that report it, the analysis that counts it) does not import the openai SDK, half a second
of every process's start-up; `agents.llm` is imported where a call is made.
"""

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents.models import LLMProvider


class LLMError(Exception):
    """An LLM call that gave no usable answer. `kind` says why; `permanent` ones are not
    worth retrying later (a refused key, an exhausted quota, an unknown model, a redirect)."""

    PERMANENT_KINDS = frozenset({"auth", "quota", "model_not_found", "bad_request", "redirect"})

    def __init__(self, kind: str, message: str, usage: "LLMUsage | None" = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.usage = usage or LLMUsage()

    @property
    def permanent(self) -> bool:
        return self.kind in self.PERMANENT_KINDS


@dataclass
class LLMUsage:
    calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0
    cost: Decimal = field(default_factory=Decimal)

    def add_request(self, seconds: float) -> None:
        """One request sent, answered or not: a timed-out one costs its seconds too."""
        self.calls += 1
        self.latency_seconds += seconds

    def add_tokens(self, provider: LLMProvider, usage: Any) -> None:
        if usage is None:
            return
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost += (
            Decimal(prompt) * provider.price_per_1k_input + Decimal(completion) * provider.price_per_1k_output
        ) / 1000


@dataclass
class LLMResult:
    data: dict[str, Any]
    usage: LLMUsage
    model: str
    response_format: str
