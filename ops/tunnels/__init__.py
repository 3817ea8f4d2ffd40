"""Local TCP ports that lead, through SSH, to servers on a remote host's loopback.

- :mod:`ops.tunnels.forward`: one local listening socket; each accepted connection gets a
  ``direct-tcpip`` channel and a pump thread copying bytes both ways
- :mod:`ops.tunnels.supervisor`: a tunnel plus a thread that re-opens a dropped SSH
  connection with backoff and probes the server's ``/v1/models``
- :mod:`ops.tunnels.state`: the JSON file that lists the forwards running on this machine
- :mod:`ops.tunnels.errors`: the error tree

All in-process with paramiko: no ``ssh`` binary, no tmux.
"""
