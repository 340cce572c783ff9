"""Forge: run AI coding agents in isolated workspaces and stream what they do."""

import os

__version__ = "0.1.0"

# Forge's processes fork only to exec at once (sandboxes, runners, executors, git), so gRPC's
# fork handlers have nothing to protect; with them on, every fork while a gRPC call is in flight
# logs "Other threads are currently calling into gRPC, skipping fork() handlers". This must be
# set before gRPC is first imported, hence here.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
