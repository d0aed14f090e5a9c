"""The gateway's error vocabulary.

Every failure a client can cause or observe is one of these, so the protocol layers (Flight SQL,
REST, CLI) translate a single hierarchy into their own status codes instead of guessing from
exception text.  Each error says what was wrong and, where it helps, what to do next.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class: a failure with a protocol-neutral status name."""

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidQuery(MeshError):
    """The SQL does not parse, is not a read statement, or references something wrongly."""

    status = "INVALID_ARGUMENT"


class InvalidDescriptor(MeshError):
    """A data-product descriptor failed validation; ``problems`` lists every error by path."""

    status = "INVALID_ARGUMENT"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class NotFound(MeshError):
    """A product, version or prepared statement that does not exist."""

    status = "NOT_FOUND"


class SourceUnavailable(MeshError):
    """A source could not be reached or failed while answering a fragment."""

    status = "UNAVAILABLE"


class ResourceExhausted(MeshError):
    """The query needed more memory than the gateway allows one query, or the queue is full."""

    status = "RESOURCE_EXHAUSTED"


class QueryTimeout(MeshError):
    """The query ran past its deadline; its fragments were cancelled at the sources."""

    status = "DEADLINE_EXCEEDED"


class QueryCancelled(MeshError):
    """The client cancelled the query or went away."""

    status = "CANCELLED"


class Unsupported(MeshError):
    """A valid request the gateway deliberately does not serve (for example, writes)."""

    status = "UNIMPLEMENTED"


class ShuttingDown(MeshError):
    """The gateway is draining after SIGTERM and takes no new queries; retry on another replica."""

    status = "UNAVAILABLE"


class PermissionDenied(MeshError):
    """Governance refused the request; the message names the product and the policy."""

    status = "PERMISSION_DENIED"


class Conflict(MeshError):
    """A write lost a race: another publisher changed the same product first (REST 409).

    Retrying re-runs the checks against the registry as it is now."""

    status = "ALREADY_EXISTS"


class InvalidRequest(MeshError):
    """A request's arguments are malformed (not a query, not a descriptor): e.g. an unknown
    lifecycle status or a version that is not ``MAJOR`` or ``MAJOR.MINOR.PATCH``."""

    status = "INVALID_ARGUMENT"


class PreconditionFailed(MeshError):
    """The request is valid but the product is not in a state that allows it (REST 409): e.g.
    retiring a version before its deprecation notice period has passed."""

    status = "FAILED_PRECONDITION"
