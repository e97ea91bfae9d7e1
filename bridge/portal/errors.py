"""The one error the portal API raises on purpose, and its reason codes.

A `PortalError` says which rule a call broke (`reason`, a stable machine
code a portal can map to its own message) and which ids were involved.
It never carries names, email addresses, subjects or bodies: errors end up
in logs and tracebacks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from bridge.errors import BridgeError


class Reason(enum.StrEnum):
    """Why a portal operation was refused."""

    NO_SUCH_ORGANIZATION = "no_such_organization"
    NO_SUCH_PARTICIPANT = "no_such_participant"
    NO_SUCH_THREAD = "no_such_thread"
    NO_SUCH_MESSAGE = "no_such_message"
    WRONG_ORGANIZATION = "wrong_organization"
    NOT_STAFF = "not_staff"
    NOT_A_CLIENT = "not_a_client"
    NOT_A_CLINICIAN = "not_a_clinician"
    NOT_CONTACT_OF_CLIENT = "not_contact_of_client"
    NOT_A_MEMBER = "not_a_member"
    NO_ACCESS = "no_access"
    INACTIVE_CLIENT = "inactive_client"
    INACTIVE_PARTICIPANT = "inactive_participant"
    CONVENIENCE_NEEDS_ACKNOWLEDGEMENT = "convenience_needs_acknowledgement"
    ACKNOWLEDGER_NOT_ADMIN = "acknowledger_not_admin"
    INVALID_ADDRESS = "invalid_address"
    DUPLICATE_EMAIL = "duplicate_email"
    NO_ROLES = "no_roles"
    NO_RECIPIENTS = "no_recipients"
    EMPTY_MESSAGE = "empty_message"
    NO_BLOB_DIR = "no_blob_dir"
    INVALID_VALUE = "invalid_value"
    NAIVE_DATETIME = "naive_datetime"


IdValue = int | tuple[int, ...]


class PortalError(BridgeError):
    """A portal operation refused, with a reason code and the ids involved.

    Nothing is written when it is raised inside `store.transaction()`: the
    transaction rolls back, so an operation either happens whole or not at all.
    """

    def __init__(
        self, reason: Reason, *, field: str | None = None, **ids: int | Iterable[int] | None
    ) -> None:
        self.reason: str = reason.value
        # For INVALID_VALUE: the name of the argument refused (never its value).
        self.field = field
        self.ids: dict[str, IdValue] = {
            key: value if isinstance(value, int) else tuple(value)
            for key, value in ids.items()
            if value is not None
        }
        parts = [f"{key}={value}" for key, value in self.ids.items()]
        if field is not None:
            parts.insert(0, f"field={field}")
        shown = ", ".join(parts)
        super().__init__(f"{self.reason} ({shown})" if shown else self.reason)
