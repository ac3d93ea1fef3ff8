"""What the tests' `accelerate launch` commands share."""

import socket


def free_port() -> tuple[str, str]:
    """``--main_process_port`` with a port free now: launches in parallel test workers (`pytest -n 2`)
    must not meet on accelerate's default 29500. Not accelerate's own ``0`` (pick a free port): older
    releases that the project's ``accelerate>=0.30`` admits do not have it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return "--main_process_port", str(probe.getsockname()[1])
