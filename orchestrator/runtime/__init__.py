"""The Ray runtime: a Plan in, running and routed replicas out.

Pure parts: ``desired`` (Plan -> replica specs), ``reconcile`` (desired vs observed -> actions), ``balance``
(which replica takes a request). Effects: ``guard`` (one engine process tree), ``replica`` (Ray actor around
one engine), ``controller`` (Ray actor: the reconcile loop and its executor),
``cluster`` (every Ray call the controller makes), ``router`` (OpenAI HTTP), ``metrics``, ``local`` (the
embedded multi-node cluster) and ``client`` (what the CLI calls).
"""
