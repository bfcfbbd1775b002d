"""moxin: map LLM model variants onto heterogeneous accelerators and run them.

Layers (a package imports only those below it; pyproject.toml [tool.importlinter], checked by `make test`):
    cli -> render | runtime -> planner -> engines -> estimate -> compat -> spec -> devtools | errors | output
"""

__version__ = "0.1.0"
