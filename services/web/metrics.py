"""The web service's Prometheus metrics (served at ``/metrics`` on its HTTP port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ACTIVE_SESSIONS = Gauge("mrt_web_active_sessions", "Lyria WebSocket sessions open")
SESSIONS_ENDED = Counter(
    "mrt_web_sessions_ended_total",
    "Lyria WebSocket sessions ended, by outcome (ok, cancelled, "
    "invalid_message, unauthenticated, unavailable, ...)",
    ["outcome"],
)
CLIENT_MESSAGES = Counter(
    "mrt_web_client_messages_total", "Lyria client messages received, by kind", ["kind"]
)
CHUNKS_SENT = Counter("mrt_web_chunks_sent_total", "Audio chunks sent to WebSocket clients")
WARNINGS_SENT = Counter(
    "mrt_web_warnings_sent_total", "warning and filteredPrompt messages sent, by cause", ["cause"]
)
