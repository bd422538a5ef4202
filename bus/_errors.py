"""The one error tree of taskbus.

Every error a caller can see has a stable ``code`` (used on the bus in ``rejected``
replies and ``finished`` events, and in MCP error results) and builds its own message
from its fields. Messages never contain secrets.

    TaskbusError
    +-- ConfigError                   bad TASKBUS_* variable or taskbus.toml
    +-- BusError
    |   +-- SubjectError              a subject token that is empty or not allowed
    |   +-- MessageDecodeError        malformed, oversized, wrong-type, unknown-tag payload
    |   +-- PublishError              JetStream did not acknowledge after retries
    |   +-- DuplicateMessage          a message id already names a different message
    |   +-- BusTimeout (TimeoutError) a bus wait ran past its deadline
    |   +-- EmbeddedServerError       the embedded nats-server could not start
    +-- SignatureError                job policy unsigned, forged or altered
    +-- ProfileError
    |   +-- AuthError                 key missing, unknown, revoked or expired
    |   +-- NotFound                  unknown profile, key, task
    |   +-- InvalidInput              a value an operator or caller gave is not valid
    |   +-- PolicyDenied              the request asks for more than the profile grants
    |   +-- BudgetExceeded            the cost cap does not fit the remaining budget
    |   +-- RateLimited               too many requests per minute
    |   +-- ConcurrencyLimit          too many tasks running for this key
    +-- SandboxError
    |   +-- SandboxUnavailable        backend missing (no docker, no bwrap, no image)
    |   +-- SandboxTimeout (TimeoutError)
    +-- ModelError                    the upstream model failed or refused
    +-- TaskError                     a task could not be run or followed
"""

from __future__ import annotations

from typing import Any, ClassVar


class TaskbusError(Exception):
    """Root of every error taskbus raises on purpose."""

    code: ClassVar[str] = "internal_error"
    hint: ClassVar[str] = ""

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)
        self.message = message or self.default_message()
        super().__init__(self.message)

    def default_message(self) -> str:
        return self.__class__.__name__

    def describe(self) -> str:
        """The message plus what to do about it, for a human or a model."""
        if self.hint and self.hint not in self.message:
            return f"{self.message} {self.hint}"
        return self.message


class ConfigError(TaskbusError):
    code = "config_error"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}", variable=variable, problem=problem)


class BusError(TaskbusError):
    code = "bus_error"


class SubjectError(BusError, ValueError):
    code = "bad_subject"

    def __init__(self, token: str, what: str) -> None:
        super().__init__(
            f"invalid {what} {token!r}: use letters, digits, '-' and '_' only (1-128 characters)",
            token=token,
            what=what,
        )


class MessageDecodeError(BusError, ValueError):
    code = "malformed_message"
    hint = "Check the payload against the JSON Schema from `taskbus schema`."

    def __init__(self, reason: str, *, type_name: str = "message", size: int | None = None) -> None:
        super().__init__(f"cannot decode {type_name}: {reason}", reason=reason, type_name=type_name, size=size)


class MessageTooLarge(MessageDecodeError):
    code = "message_too_large"

    def __init__(self, size: int, limit: int, *, type_name: str = "message") -> None:
        TaskbusError.__init__(
            self,
            f"{type_name} is {size} bytes, over the limit of {limit} bytes; send less "
            "(large files belong in the project directory, not inline)",
            reason="too large",
            type_name=type_name,
            size=size,
            limit=limit,
        )


class PublishError(BusError):
    code = "publish_failed"

    def __init__(self, subject: str, attempts: int, cause: str) -> None:
        super().__init__(
            f"publish to {subject} not acknowledged after {attempts} attempts: {cause}; "
            "retry in a few seconds (`taskbus doctor` shows whether NATS and its streams are up)",
            subject=subject,
            attempts=attempts,
            cause=cause,
        )


class DuplicateMessage(BusError):
    """A message id already names a different message (another process published first)."""

    code = "duplicate_message"


class BusTimeout(BusError, TimeoutError):
    code = "bus_timeout"


class EmbeddedServerError(BusError):
    code = "nats_unavailable"


class SignatureError(TaskbusError):
    code = "bad_signature"

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"job {task_id} refused: {reason}", task_id=task_id, reason=reason)


class ProfileError(TaskbusError):
    code = "profile_error"


class AuthError(ProfileError):
    code = "unauthorized"
    hint = "Pass a valid API key (Authorization: Bearer tb_...); operators create one with `taskbus keys create`."


class KeyRevoked(AuthError):
    code = "key_revoked"
    hint = "Ask an operator for a new key (`taskbus keys create`)."


class KeyExpired(AuthError):
    code = "key_expired"
    hint = "Ask an operator to rotate it (`taskbus keys rotate`)."


class NotFound(ProfileError, LookupError):
    code = "not_found"


class InvalidInput(ProfileError, ValueError):
    code = "invalid_input"


class PolicyDenied(ProfileError):
    code = "permission_denied"
    hint = "Ask for less, or ask an operator for a profile that grants it."


class BudgetExceeded(ProfileError):
    code = "budget_exceeded"
    hint = "Lower max_cost_usd, wait for the budget window to roll over, or ask an operator to raise it (`taskbus budgets set`)."


class RateLimited(ProfileError):
    code = "rate_limited"
    hint = "Retry after a short pause."


class ConcurrencyLimit(ProfileError):
    code = "concurrency_limit"
    hint = "Wait for one of your running tasks to finish, or cancel one."


class SandboxError(TaskbusError):
    code = "sandbox_error"


class SandboxUnavailable(SandboxError):
    code = "sandbox_unavailable"
    hint = "Run `taskbus doctor` to see what is missing and how to install it."


class SandboxTimeout(SandboxError, TimeoutError):
    code = "timeout"


class ModelError(TaskbusError):
    code = "model_error"


class TaskError(TaskbusError):
    code = "task_error"


__all__ = [
    "TaskbusError",
    "ConfigError",
    "BusError",
    "SubjectError",
    "MessageDecodeError",
    "MessageTooLarge",
    "PublishError",
    "BusTimeout",
    "DuplicateMessage",
    "EmbeddedServerError",
    "SignatureError",
    "ProfileError",
    "AuthError",
    "KeyRevoked",
    "KeyExpired",
    "NotFound",
    "InvalidInput",
    "PolicyDenied",
    "BudgetExceeded",
    "RateLimited",
    "ConcurrencyLimit",
    "SandboxError",
    "SandboxUnavailable",
    "SandboxTimeout",
    "ModelError",
    "TaskError",
]
