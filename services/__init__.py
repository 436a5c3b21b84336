"""Magenta RT serving cluster: gateway, embedder and generator services."""
