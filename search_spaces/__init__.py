"""ranksweep.search_spaces: YAML search spaces and the one translator to Ray Tune / Optuna.

The YAML files beside this module are the shipped spaces; ``load_space(name_or_path)`` reads one.
"""

from .space import Axis, SearchSpace, SpaceError, load_space

__all__ = ["Axis", "SearchSpace", "SpaceError", "load_space"]
