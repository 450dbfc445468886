"""The control socket: its framed protocol, the server in the root's loop, the client."""
