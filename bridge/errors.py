"""The root of bridge's exceptions.

Specific errors live next to the code that raises them and subclass
`BridgeError`; they carry fields (a reason code, an id) rather than
formatted PHI. This module owns only the base class.
"""


class BridgeError(Exception):
    """Base class of every error bridge raises on purpose."""
