"""What admission checks in a request before it writes anything: what the schema cannot
say about a request, and whether its job would fit on the bus."""

from __future__ import annotations

from bus import (
    CompleteRequest,
    InvalidInput,
    MessageTooLarge,
    Policy,
    Request,
    TaskRequest,
    check_relative_path,
    encode,
    input_file_bytes,
)


def check_job_size(policy: Policy, request: Request, limit: int) -> None:
    """Refuse, before anything is recorded, a job the bus would refuse (or a runner reject)."""
    size = len(encode(policy)) + len(encode(request)) + 512  # the Job envelope and signature
    if size > limit:
        raise MessageTooLarge(size, limit, type_name="job")


def validate_request(request: Request, *, max_file_bytes: int | None = None) -> None:
    """What the schema cannot say: a completion needs a prompt or messages (not both); input
    files have safe relative paths and decodable content within the size limit."""
    if isinstance(request, TaskRequest):
        seen: set[str] = set()
        for f in request.files:
            input_file_bytes(f, max_bytes=max_file_bytes if max_file_bytes is not None else 1 << 62)
            if str(check_relative_path(f.path)) in seen:
                raise InvalidInput(f"file path {f.path[:200]!r} is given twice")
            seen.add(str(check_relative_path(f.path)))
    if isinstance(request, CompleteRequest):
        if not request.prompt and not request.messages:
            raise InvalidInput("a completion needs `prompt` (a string) or `messages` (a non-empty list)")
        if request.prompt and request.messages:
            raise InvalidInput("give either `prompt` or `messages`, not both (put earlier turns in messages)")
        if request.messages and request.messages[-1].role != "user":
            raise InvalidInput("the last of `messages` must have role 'user'")
