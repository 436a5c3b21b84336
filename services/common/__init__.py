"""Code every service shares: model facts, config flags, metrics, gRPC bootstrap, stubs."""
