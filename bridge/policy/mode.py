"""Which notification mode applies to one recipient of one message.

Secure mode is the default and the fallback: a notification says only that a
message is waiting. Convenience mode (content by email, reply by email) is the
exception, and it needs three things at once: the practice chose it, the
practice acknowledged that HIPAA compliance can then not be guaranteed, and the
recipient consented to receive content by email. A recipient who is not active
gets secure mode whatever else holds.

Pure: flags in, a mode out. This module does not read the organization or the
participant from the store, and does not decide *whether* someone is notified
(audience and preferences do that); it only decides *how*.
"""

from __future__ import annotations

from bridge.store.models import NotificationMode


def resolve_mode(
    org_mode: NotificationMode,
    *,
    acknowledged: bool,
    recipient_consents: bool,
    recipient_active: bool = True,
) -> NotificationMode:
    """The mode of a notification to one recipient.

    `org_mode` is the practice's configured mode; `acknowledged` is true when
    the practice's HIPAA-risk acknowledgement is on record; `recipient_consents`
    is the recipient's consent to receive message content by email;
    `recipient_active` is false for deactivated people.

    Returns `CONVENIENCE` only when every condition holds, `SECURE` otherwise:
    a missing flag can only ever make a notification say less, never more.
    """
    if (
        org_mode == NotificationMode.CONVENIENCE
        and acknowledged
        and recipient_consents
        and recipient_active
    ):
        return NotificationMode.CONVENIENCE
    return NotificationMode.SECURE
