"""What the tests' `accelerate launch` commands share."""

# `--main_process_port 0`: accelerate takes a free port instead of its default 29500, so that
# launches in parallel test workers (`pytest -n 2`) never meet on one port.
FREE_PORT = ("--main_process_port", "0")
