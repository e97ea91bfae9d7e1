"""Peers for the outbound tests: an SMTP sink that can be told to fail, and seeded rows.

The sink is aiosmtpd's `SMTP` protocol served by `loop.create_server` in the
test's own event loop (as the daemon serves its listener), not the threaded
`Controller`. Faults are injected here, in the peer:

* `sink.script("451 4.3.0 try later", "250 OK")`: answers to the next DATA
  commands, in order (then "250 OK" again); `DROP` closes the connection
  instead of answering;
* `sink.script_rcpt(address, "550 5.1.1 no such user")`: answers to RCPT for
  one address;
* `await sink.stop()` / `await sink.start()`: the relay goes down (listener
  closed, open connections cut) and comes back on the same port.

A delivery is recorded only when the sink answers 250 to DATA, so "the
relay received it" means exactly what it means for a real relay.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest
from smtp_sink import (
    CertFiles,
    Seed,
    Sink,
)

from bridge.store.engine import Store


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A plain-text sink; the test fails if the sink itself raised."""
    relay = Sink()
    await relay.start()
    yield relay
    await relay.stop()
    assert relay.errors == [], f"the sink raised: {relay.errors!r}"


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A self-signed certificate for 127.0.0.1 (openssl; `cryptography` is not installed)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
    ]
    command += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    return CertFiles(cert, key)


@pytest.fixture
async def tls_sink(self_signed: CertFiles) -> AsyncIterator[Sink]:
    """A sink that requires STARTTLS (self-signed certificate) and AUTH."""
    relay = Sink(tls_context=self_signed.server_context(), require_starttls=True, auth=True)
    await relay.start()
    yield relay
    await relay.stop()
    assert relay.errors == [], f"the sink raised: {relay.errors!r}"


@pytest.fixture
def seed(store: Store) -> Seed:
    return Seed(store)
