"""``moxin bench``: measure an OpenAI-compatible endpoint under load and record the curve as a Benchmark.

Where it sits: at the edge, beside ``runtime/`` (it sends network traffic). ``workload`` (what is sent),
``stats`` (what was measured), ``plot`` and ``record`` (the curve as SVG and as a ``Benchmark`` document) are
pure; ``load`` (the aiohttp generator), ``routes`` (the router's routing table) and ``host`` (this machine)
have the effects.
"""
