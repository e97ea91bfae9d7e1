"""The portal side of the shared store, in Python.

The portal web application is not part of bridge; it shares the store and
writes it directly (in SQL, in any language). This package writes the store
the way a portal does, for bridge's tests, the demo and portals written in
Python. It only writes the store: it sends no mail, issues no reply tokens
(it revokes them when access is lost) and purges nothing; those are the
daemon's jobs.

Two ways to call it:

* the functions in `people`, `threads`, `access`, `mass` and `mailboxes`
  take an open write session, so several operations can share one
  transaction::

      async with store.transaction() as session:
          org = await people.create_organization(session, ...)

* `Portal(store, blob_dir)` offers the same operations, one transaction each.

Refusals raise `PortalError` with a `reason` code and ids, never content.
Every function that stamps a time takes `now` (timezone-aware, default: the
current time), so tests control the clock.
"""

from bridge.portal.access import AudienceChange
from bridge.portal.errors import PortalError, Reason
from bridge.portal.facade import Portal
from bridge.portal.mass import MassRef
from bridge.portal.people import Preferences
from bridge.portal.threads import AttachmentIn, ThreadRef

__all__ = [
    "AttachmentIn",
    "AudienceChange",
    "MassRef",
    "Portal",
    "PortalError",
    "Preferences",
    "Reason",
    "ThreadRef",
]
