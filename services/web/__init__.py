"""Lyria RealTime-compatible WebSocket endpoint and browser player, in front of the gateway."""
