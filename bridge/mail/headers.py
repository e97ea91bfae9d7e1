"""Names of the headers bridge writes and reads on its own mail.

Kept in one place so the outbound composer and the inbound classifier agree.
"""

# Marks every email the daemon sends, so the inbound side recognises (and drops)
# its own mail when it loops back. The value is an opaque per-message id.
OWN_MAIL_HEADER = "X-Bridge-Notification"

# RFC 3834: every notification is machine-generated.
AUTO_SUBMITTED = "Auto-Submitted"
AUTO_GENERATED = "auto-generated"
