"""The Ray runtime: a Plan in, running and routed replicas out.

Pure parts: ``desired`` (Plan -> replica specs), ``reconcile`` (desired vs observed -> actions), ``balance``
(which replica takes a request). Effects: ``guard`` (one engine process tree), ``replica`` (Ray actor around
one engine), ``controller`` (Ray actor: the reconcile loop and its executor),
``cluster`` (every Ray call the controller makes), ``router`` (OpenAI HTTP), ``listener`` (one listening socket
shared by a node's routers), ``workers`` (``moxin router --workers``: a parent and its router processes,
``router_worker`` the entry of each), ``metrics``, ``local`` (the
embedded multi-node cluster) and ``client`` (what the CLI calls).
"""
