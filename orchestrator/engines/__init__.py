"""How each engine runs a variant: launch values (``launch``, ``vllm``, ``mlx``); whether it can at all is
``orchestrator.compat``."""
