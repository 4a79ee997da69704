"""What to train and how: recipe YAML -> dataclasses, and one pure resolve step with the ds_config JSON.

    load_resolved(recipe_path, ds_config_path, overrides, world_size, cuda) -> Resolved   # read both, resolve
    load_recipe(path, overrides) -> Recipe          # the strict YAML loader (unknown keys and wrong types are errors)
    load_ds_config(path, overrides) -> dict
    split_overrides(items) -> (recipe overrides, ds overrides)
    resolve(recipe, ds_config, world_size, ds_config_path, cuda) -> Resolved
    ConfigError                                     # a one-line, user-facing error

Nothing here touches the file system beyond reading the two files, imports transformers or probes DeepSpeed:
that is preflight's (moe/launch/).
"""

from moe.config.loader import ConfigError, load_ds_config, load_recipe, split_overrides, to_dict
from moe.config.resolve import Resolved, load_resolved, resolve
from moe.config.schema import Recipe

__all__ = [
    "ConfigError",
    "Recipe",
    "Resolved",
    "load_ds_config",
    "load_recipe",
    "load_resolved",
    "resolve",
    "split_overrides",
    "to_dict",
]
