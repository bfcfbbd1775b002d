"""moxin: map LLM model variants onto heterogeneous accelerators and run them.

Layers (dependencies point down only):
    cli -> runtime | render | planner -> engines | estimate -> spec
"""

__version__ = "0.1.0"
