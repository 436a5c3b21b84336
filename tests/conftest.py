"""Settings for the whole test session."""

import os

# Tests start service processes while holding gRPC channels; see services/cli/__init__.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
