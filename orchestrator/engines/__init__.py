"""How each engine runs a variant: compatibility (``compat``) and launch values (``launch``, ``vllm``, ``mlx``)."""
