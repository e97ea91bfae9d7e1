"""`Portal`: the portal API with one transaction per call.

For tests, the demo and Python portals that do not manage transactions
themselves. Each method opens `store.transaction()`, calls the function of
the same name from `people`, `threads`, `access`, `mass` or `mailboxes`, and
commits; a `PortalError` rolls everything back. To combine several
operations in one transaction, call those functions directly with your own
session.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from bridge.portal import access, mailboxes, mass, people, threads
from bridge.portal.access import AudienceChange
from bridge.portal.mass import MassRef
from bridge.portal.people import Preferences
from bridge.portal.threads import AttachmentIn, ThreadRef
from bridge.store.engine import Store
from bridge.store.models import Audience, NotificationMode, StaffRole


class Portal:
    """A portal writing to `store`; attachment bytes go under `blob_dir`."""

    def __init__(self, store: Store, blob_dir: Path | None = None) -> None:
        self.store = store
        self.blob_dir = blob_dir

    # --- organizations and people ---------------------------------------------------

    async def create_organization(
        self,
        display_name: str,
        portal_base_url: str,
        reply_domain: str,
        *,
        trash_retention_days: int = 15,
        now: datetime | None = None,
    ) -> int:
        async with self.store.transaction() as session:
            return await people.create_organization(
                session,
                display_name,
                portal_base_url,
                reply_domain,
                trash_retention_days=trash_retention_days,
                now=now,
            )

    async def set_notification_mode(
        self,
        org_id: int,
        mode: NotificationMode | str,
        *,
        acknowledged_by: int | None,
        now: datetime | None = None,
    ) -> None:
        async with self.store.transaction() as session:
            await people.set_notification_mode(
                session, org_id, mode, acknowledged_by=acknowledged_by, now=now
            )

    async def add_staff(
        self,
        org_id: int,
        display_name: str,
        roles: Iterable[StaffRole | str],
        emails: Iterable[str],
        *,
        has_portal_account: bool = True,
        email_content_consent: bool = False,
        preferences: Preferences | None = None,
        now: datetime | None = None,
    ) -> int:
        async with self.store.transaction() as session:
            return await people.add_staff(
                session,
                org_id,
                display_name,
                roles,
                emails,
                has_portal_account=has_portal_account,
                email_content_consent=email_content_consent,
                preferences=preferences,
                now=now,
            )

    async def add_client(
        self,
        org_id: int,
        display_name: str,
        emails: Iterable[str],
        *,
        active: bool = True,
        has_portal_account: bool = False,
        email_content_consent: bool = False,
        now: datetime | None = None,
    ) -> int:
        async with self.store.transaction() as session:
            return await people.add_client(
                session,
                org_id,
                display_name,
                emails,
                active=active,
                has_portal_account=has_portal_account,
                email_content_consent=email_content_consent,
                now=now,
            )

    async def add_contact(
        self,
        client_id: int,
        display_name: str,
        emails: Iterable[str],
        *,
        email_content_consent: bool = False,
        has_portal_account: bool = False,
        now: datetime | None = None,
    ) -> int:
        async with self.store.transaction() as session:
            return await people.add_contact(
                session,
                client_id,
                display_name,
                emails,
                email_content_consent=email_content_consent,
                has_portal_account=has_portal_account,
                now=now,
            )

    async def add_email(self, participant_id: int, address: str, primary: bool = False) -> int:
        async with self.store.transaction() as session:
            return await people.add_email(session, participant_id, address, primary)

    async def set_preferences(
        self,
        staff_id: int,
        *,
        email_enabled: bool | None = None,
        administrative: bool | None = None,
        billing: bool | None = None,
        clinical: bool | None = None,
    ) -> Preferences:
        async with self.store.transaction() as session:
            return await people.set_preferences(
                session,
                staff_id,
                email_enabled=email_enabled,
                administrative=administrative,
                billing=billing,
                clinical=clinical,
            )

    async def assign_clinician(self, client_id: int, clinician_id: int) -> None:
        async with self.store.transaction() as session:
            await people.assign_clinician(session, client_id, clinician_id)

    async def deactivate(self, participant_id: int, *, now: datetime | None = None) -> int:
        async with self.store.transaction() as session:
            return await people.deactivate(session, participant_id, now=now)

    # --- threads and messages -------------------------------------------------------

    async def create_thread(
        self,
        org_id: int,
        client_id: int,
        subject: str,
        *,
        audience: Audience | str = Audience.CLINICAL,
        topic: str | None = None,
        clinician_ids: Iterable[int] | None = None,
        cc_contact_ids: Iterable[int] = (),
        author_id: int,
        body_text: str,
        body_html: str | None = None,
        attachments: Iterable[AttachmentIn] = (),
        now: datetime | None = None,
    ) -> ThreadRef:
        async with self.store.transaction() as session:
            return await threads.create_thread(
                session,
                org_id,
                client_id,
                subject,
                audience=audience,
                topic=topic,
                clinician_ids=clinician_ids,
                cc_contact_ids=cc_contact_ids,
                author_id=author_id,
                body_text=body_text,
                body_html=body_html,
                attachments=attachments,
                blob_dir=self.blob_dir,
                now=now,
            )

    async def post_message(
        self,
        thread_id: int,
        author_id: int,
        body_text: str,
        body_html: str | None = None,
        *,
        attachments: Iterable[AttachmentIn] = (),
        now: datetime | None = None,
    ) -> int:
        async with self.store.transaction() as session:
            return await threads.post_message(
                session,
                thread_id,
                author_id,
                body_text,
                body_html,
                attachments=attachments,
                blob_dir=self.blob_dir,
                now=now,
            )

    async def change_audience(
        self,
        thread_id: int,
        audience: Audience | str,
        *,
        actor_id: int | None = None,
        now: datetime | None = None,
    ) -> AudienceChange:
        async with self.store.transaction() as session:
            return await access.change_audience(
                session, thread_id, audience, actor_id=actor_id, now=now
            )

    async def send_mass_message(
        self,
        org_id: int,
        author_id: int,
        client_ids: Iterable[int],
        subject: str,
        body_text: str,
        body_html: str | None = None,
        *,
        audience: Audience | str = Audience.CLINICAL,
        topic: str | None = None,
        now: datetime | None = None,
    ) -> MassRef:
        async with self.store.transaction() as session:
            return await mass.send_mass_message(
                session,
                org_id,
                author_id,
                client_ids,
                subject,
                body_text,
                body_html,
                audience=audience,
                topic=topic,
                now=now,
            )

    async def mass_message_reach(self, author_id: int) -> list[int]:
        async with self.store.read() as session:
            return await mass.mass_message_reach(session, author_id)

    # --- one person's mailbox -------------------------------------------------------

    async def mark_read(
        self, thread_id: int, participant_id: int, up_to_message_id: int | None = None
    ) -> int | None:
        async with self.store.transaction() as session:
            return await mailboxes.mark_read(session, thread_id, participant_id, up_to_message_id)

    async def archive(
        self, thread_id: int, participant_id: int, *, now: datetime | None = None
    ) -> None:
        async with self.store.transaction() as session:
            await mailboxes.archive(session, thread_id, participant_id, now=now)

    async def unarchive(self, thread_id: int, participant_id: int) -> None:
        async with self.store.transaction() as session:
            await mailboxes.unarchive(session, thread_id, participant_id)

    async def trash(
        self, thread_id: int, participant_id: int, *, now: datetime | None = None
    ) -> None:
        async with self.store.transaction() as session:
            await mailboxes.trash(session, thread_id, participant_id, now=now)

    async def restore(self, thread_id: int, participant_id: int) -> None:
        async with self.store.transaction() as session:
            await mailboxes.restore(session, thread_id, participant_id)

    async def delete_permanently(
        self, thread_id: int, participant_id: int, *, now: datetime | None = None
    ) -> None:
        async with self.store.transaction() as session:
            await mailboxes.delete_permanently(session, thread_id, participant_id, now=now)
