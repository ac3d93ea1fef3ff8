"""What the tests' distributed launches share."""

import socket


def free_port() -> int:
    """A TCP port free now: launches in parallel test workers (`pytest -n 2`) must not meet on
    accelerate's or torchrun's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main_process_port() -> tuple[str, str]:
    """``accelerate launch``'s port flags with a free port. Not accelerate's own ``0`` (pick a free
    port): older releases that the project's ``accelerate>=0.30`` admits do not have it."""
    return "--main_process_port", str(free_port())
