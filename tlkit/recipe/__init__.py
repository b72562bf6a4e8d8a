"""Recipes: YAML files validated by pydantic. load_recipe(path, overrides) -> Recipe.

Every default lives here with a one-line reason (its field docstring), printed by `tlkit recipe show`.
Unknown keys are errors; all errors of a file are reported together with dotted paths and did-you-mean hints.

Path rule: a relative `data.root` written in a recipe file resolves against the recipe file's folder (so a recipe
works from any working directory); a relative path given with `--set` resolves against the current directory
(where the user typed it).
"""


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
    Auto,
    BackboneSection,
    CacheSection,
    DataSection,
    Finetune,
    Gradual,
    HeadSection,
    LayerDecay,
    LinearProbe,
    LpFt,
    OptimSection,
    OutputSection,
    Recipe,
    ScheduleSection,
    Strategy,
    TrainerSection,
    TTASection,
)

__all__ = [
    "Auto", "BackboneSection", "CacheSection", "DataSection", "Finetune", "Gradual", "HeadSection", "LayerDecay",
    "LinearProbe", "LpFt", "OptimSection", "OutputSection", "Recipe", "ScheduleSection", "Strategy", "TTASection",
    "TrainerSection", "apply_overrides", "load_recipe", "parse_override", "read_recipe_file", "recipe_to_dict",
    "render_recipe", "resolve_path", "validate_recipe",
]
