"""Inter-process communication: msgpack frames, typed messages, channels."""
