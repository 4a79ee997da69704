"""Recipe YAML -> dataclasses -> one resolve step with the ds_config JSON."""
from moe.config.loader import ConfigError, load_recipe, to_dict
from moe.config.resolve import Resolved, load_ds_config, resolve, split_overrides, write_run_folder
from moe.config.schema import Recipe

__all__ = ["ConfigError", "Recipe", "Resolved", "load_ds_config", "load_recipe", "resolve", "split_overrides",
           "to_dict", "write_run_folder"]
