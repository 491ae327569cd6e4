"""The control socket: the server in the daemon (server.py, commands.py, metrics.py) and
the client of `stormount ctl` (client.py, render.py)."""
