"""The ``mrt`` command line: run a local cluster, stream music to a WAV file, query the API."""

import os

# The launcher forks service processes from a process that also talks gRPC (health checks).
# gRPC's fork support would restart its poller in the forked child before exec, where the
# poller's epoll descriptor is already closed, and abort the child. We never use gRPC across
# fork, so turn it off before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
