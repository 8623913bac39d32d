"""The project's built-in edit data: a hand-written fact table (facts.py) and counterfactual edits drawn
from it (builtin.py). Nothing is imported here, so that `python -m dafnet_plugin.data.builtin` runs cleanly."""
