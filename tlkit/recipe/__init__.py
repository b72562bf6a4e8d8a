"""Recipes: YAML files validated by pydantic. load_recipe(path, overrides) -> Recipe.

A recipe composes the settings models each layer owns (tlkit.model.settings, tlkit.model.strategies,
tlkit.data.settings), so the Python API and recipes share one definition and one default per
setting; `tlkit recipe show` prints each with its reason. Unknown keys are errors; all errors of a file are reported
together with dotted paths and did-you-mean hints.

Path rule: a relative `data.root` written in a recipe file resolves against the recipe file's folder (so a recipe
works from any working directory); a relative path given with `--set` resolves against the current directory
(where the user typed it).
"""

from tlkit.data.settings import CacheConfig, DataConfig, TrainAugment
from tlkit.model.settings import (
    BackboneConfig,
    HeadConfig,
    MixingConfig,
    OptimConfig,
    ScheduleConfig,
    TTAConfig,
)
from tlkit.model.strategies import (
    Auto,
    Finetune,
    FinetuneTop,
    Gradual,
    LayerDecay,
    LinearProbe,
    LpFt,
    StrategyConfig,
)
from tlkit.recipe.loading import (
    apply_overrides,
    load_recipe,
    parse_override,
    read_recipe_file,
    recipe_to_dict,
    render_recipe,
    resolve_path,
    validate_recipe,
)
from tlkit.recipe.sections import (
    LoggingConfig,
    MLflowConfig,
    OutputConfig,
    Recipe,
    TrainerConfig,
    WandbConfig,
)

__all__ = [
    "Auto", "BackboneConfig", "CacheConfig", "DataConfig", "Finetune", "FinetuneTop", "Gradual", "HeadConfig", "LayerDecay",
    "LinearProbe", "LoggingConfig", "LpFt", "MLflowConfig", "MixingConfig", "OptimConfig", "OutputConfig", "Recipe", "ScheduleConfig", "StrategyConfig",
    "TTAConfig", "TrainAugment", "TrainerConfig", "WandbConfig", "apply_overrides", "load_recipe", "parse_override",
    "read_recipe_file", "recipe_to_dict", "render_recipe", "resolve_path", "validate_recipe",
]
