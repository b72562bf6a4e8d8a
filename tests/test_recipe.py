"""Recipe loading: every error at once with dotted paths and hints, --set overrides, the data.root path rule."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tlkit.errors import RecipeError
from tlkit.recipe import (
    Finetune,
    LinearProbe,
    apply_overrides,
    load_recipe,
    parse_override,
    render_recipe,
    validate_recipe,
)

BAD_RECIPE = """\
version: 1
backbone:
  name: resnet5O        # letter O, not zero
strategy:
  kind: fintune
head:
  activaton: relu
optim:
  name: sgdd
  lr: -0.1
data:
  root: images
"""


def write_recipe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bad_recipe_message(tmp_path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path / "bad.yaml", BAD_RECIPE))
    return str(info.value)


def problem_line(message: str, dotted: str) -> str:
    """The one '  - <dotted>: ...' line of an error message."""
    lines = [line for line in message.splitlines() if line.startswith(f"  - {dotted}:")]
    assert len(lines) == 1, f"expected one problem at {dotted!r} in:\n{message}"
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# Errors


def test_recipe_error_is_a_value_error(tmp_path):
    assert issubclass(RecipeError, ValueError)
    with pytest.raises(ValueError):
        load_recipe(write_recipe(tmp_path / "bad.yaml", BAD_RECIPE))


def test_all_problems_are_reported_at_once_with_dotted_paths(bad_recipe_message):
    assert "5 problem(s)" in bad_recipe_message
    for dotted in ("backbone.name", "strategy.kind", "head.activaton", "optim.name", "optim.lr"):
        problem_line(bad_recipe_message, dotted)


def test_unknown_key_gets_did_you_mean(bad_recipe_message):
    line = problem_line(bad_recipe_message, "head.activaton")
    assert "unknown key" in line
    assert "Did you mean 'activation'?" in line


def test_bad_choice_lists_the_choices_and_did_you_mean(bad_recipe_message):
    line = problem_line(bad_recipe_message, "optim.name")
    assert "'sgdd'" in line
    assert "'sgd' or 'adamw'" in line
    assert "Did you mean 'sgd'?" in line


def test_negative_lr_is_rejected_naming_the_value(bad_recipe_message):
    line = problem_line(bad_recipe_message, "optim.lr")
    assert "greater than 0" in line
    assert "-0.1" in line


def test_unknown_timm_backbone_gets_did_you_mean(bad_recipe_message):
    line = problem_line(bad_recipe_message, "backbone.name")
    assert "'resnet5O'" in line
    assert re.search(r"Did you mean .*'resnet50'", line)


def test_misspelt_strategy_kind_gets_did_you_mean(bad_recipe_message):
    line = problem_line(bad_recipe_message, "strategy.kind")
    assert "'fintune'" in line
    assert "Did you mean 'finetune'" in line


def test_error_paths_inside_a_strategy_omit_the_union_tag(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", "strategy:\n  kind: finetune\n  backbone_lr_mul: 0.1\ndata:\n  root: x\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    line = problem_line(str(info.value), "strategy.backbone_lr_mul")
    assert "Did you mean 'backbone_lr_mult'?" in line
    assert "strategy.finetune" not in str(info.value)


def test_missing_recipe_file_gets_did_you_mean(tmp_path):
    write_recipe(tmp_path / "quickstart.yaml", "data:\n  root: x\n")
    with pytest.raises(RecipeError, match="Did you mean 'quickstart.yaml'"):
        load_recipe(tmp_path / "quikstart.yaml")


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", "data:\n  root: x\noptim: [unclosed\n")
    with pytest.raises(RecipeError, match=r"not valid YAML at line \d+"):
        load_recipe(path)


def test_recipe_name_defaults_to_the_file_stem(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "ants_probe.yaml", "data:\n  root: x\n"))
    assert recipe.name == "ants_probe"


# ---------------------------------------------------------------------------------------------------------------------
# --set overrides


def test_override_value_is_parsed_as_a_yaml_number():
    path, value = parse_override("optim.lr=0.001")
    assert path == ["optim", "lr"]
    assert value == 0.001 and isinstance(value, float)


def test_override_value_is_parsed_as_a_yaml_list():
    assert parse_override("head.hidden=[64, 32]") == (["head", "hidden"], [64, 32])


def test_override_plain_text_stays_a_string():
    assert parse_override("backbone.name=resnet18") == (["backbone", "name"], "resnet18")


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(RecipeError, match="expected section.key=value"):
        parse_override("optim.lr")


def test_override_creates_missing_nested_sections():
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_override_into_a_non_section_value_is_an_error():
    with pytest.raises(RecipeError, match="seed is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_override_does_not_modify_the_callers_dict():
    raw = {"optim": {"lr": 0.1}, "head": {"hidden": [8]}}
    before = copy.deepcopy(raw)
    merged = apply_overrides(raw, ["optim.lr=0.5", "optim.name=adamw", "head.hidden=[4]"])
    assert raw == before
    assert merged["optim"] == {"lr": 0.5, "name": "adamw"}


def test_override_wins_over_the_file_value(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", "optim:\n  lr: 0.1\ndata:\n  root: x\n")
    assert load_recipe(path, ["optim.lr=0.5"]).optim.lr == 0.5


def test_override_errors_are_validated_like_file_errors():
    with pytest.raises(RecipeError, match=r"optim\.lr: .*greater than 0"):
        load_recipe(None, ["data.root=x", "optim.lr=-1"])


def test_precision_given_as_int_is_accepted():
    assert parse_override("trainer.precision=32")[1] == 32  # YAML gives an int, the field takes text
    assert load_recipe(None, ["data.root=x", "trainer.precision=32"]).trainer.precision == "32"


def test_unsupported_precision_is_rejected():
    with pytest.raises(RecipeError, match=r"trainer\.precision: got '64-true'"):
        load_recipe(None, ["data.root=x", "trainer.precision=64-true"])


# ---------------------------------------------------------------------------------------------------------------------
# data.root path rule


def test_relative_root_in_a_file_resolves_against_the_recipe_folder(tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "recipes" / "r.yaml", "data:\n  root: ../images\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Path(load_recipe(path).data.root) == (tmp_path / "images").resolve()


def test_relative_root_from_an_override_resolves_against_the_current_dir(tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "recipes" / "r.yaml", "data:\n  root: ../images\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert Path(load_recipe(path, ["data.root=mine"]).data.root) == (cwd / "mine").resolve()


def test_absolute_root_is_kept(tmp_path):
    absolute = (tmp_path / "abs_images").resolve()
    path = write_recipe(tmp_path / "recipes" / "r.yaml", f"data:\n  root: {absolute}\n")
    assert Path(load_recipe(path).data.root) == absolute


def test_a_stream_in_object_storage_keeps_its_url(tmp_path):
    path = write_recipe(tmp_path / "recipes" / "r.yaml", "data:\n  root: s3://bucket/streams/pets\n  source: litdata\n")
    assert load_recipe(path).data.root == "s3://bucket/streams/pets"
    assert load_recipe(path, ["data.root=s3://other/pets"]).data.root == "s3://other/pets"


def test_a_url_root_for_a_folder_or_table_is_refused_in_one_line(tmp_path):
    path = write_recipe(tmp_path / "recipes" / "r.yaml", "data:\n  root: s3://bucket/images\n")
    with pytest.raises(RecipeError, match="is a URL, which only source: litdata reads .* copy the images to a local"):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------------------------------
# render_recipe


def leaf_fields(model: BaseModel, prefix: str = ""):
    """(dotted name, field description) for every non-section field."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from leaf_fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.description


def test_render_prints_every_field_with_its_reason():
    recipe = load_recipe(None, ["data.root=/data", "strategy.kind=finetune"])
    text = render_recipe(recipe)
    fields = list(leaf_fields(recipe))
    leaf_lines = [line for line in text.splitlines() if not line.rstrip().endswith(":")]
    assert len(leaf_lines) == len(fields)
    for dotted, description in fields:
        assert description, f"{dotted} has no one-line reason"
        key = dotted.rsplit(".", 1)[-1]
        one_line = " ".join(description.split())  # multi-line docstrings are shown on one line
        assert any(line.strip().startswith(f"{key}: ") and line.endswith(f"  # {one_line}") for line in leaf_lines), dotted


def test_rendered_recipe_loads_back_to_the_same_recipe():
    recipe = load_recipe(None, ["data.root=/data", "head.hidden=[16]", "augment.crop_scale=[0.5, 1.0]"])
    assert validate_recipe(yaml.safe_load(render_recipe(recipe))) == recipe


# ---------------------------------------------------------------------------------------------------------------------
# Strategy union


def test_strategy_defaults_to_linear_probe():
    assert isinstance(load_recipe(None, ["data.root=x"]).strategy, LinearProbe)


def test_finetune_accepts_backbone_lr_mult():
    recipe = load_recipe(None, ["data.root=x", "strategy.kind=finetune", "strategy.backbone_lr_mult=0.05"])
    assert isinstance(recipe.strategy, Finetune)
    assert recipe.strategy.backbone_lr_mult == 0.05


def test_linear_probe_rejects_backbone_lr_mult():
    with pytest.raises(RecipeError) as info:
        load_recipe(None, ["data.root=x", "strategy.kind=linear_probe", "strategy.backbone_lr_mult=0.05"])
    assert "unknown key" in problem_line(str(info.value), "strategy.backbone_lr_mult")


def test_strategy_without_kind_asks_for_one():
    with pytest.raises(RecipeError, match=r"strategy\.kind: missing"):
        validate_recipe({"data": {"root": "x"}, "strategy": {"backbone_lr_mult": 0.1}})


def test_recipe_requires_data_root():
    with pytest.raises(RecipeError, match=r"  - data: Field required"):
        validate_recipe({})


def test_zeros_init_for_hidden_layers_is_reported_at_load_time():
    with pytest.raises(RecipeError, match=r"head\.init"):
        load_recipe(None, ["data.root=x", "head.hidden=[64]", "head.init=zeros"])


def test_warmup_must_be_shorter_than_training():
    with pytest.raises(RecipeError, match="warmup_epochs"):
        validate_recipe({"data": {"root": "x"}, "schedule": {"warmup_epochs": 5}, "trainer": {"epochs": 5}})


def test_weights_file_resolves_against_the_recipe_folder_and_must_exist(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data: {root: imgs}\nbackbone: {weights: ./w.safetensors}\n")
    assert load_recipe(recipe_file).backbone.weights == str(tmp_path / "w.safetensors")
    recipe_file.write_text("data: {root: imgs}\nbackbone: {weights: ./missing.safetensors}\n")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(recipe_file)


def test_bundled_weights_for_an_architecture_without_them_is_a_recipe_error():
    with pytest.raises(RecipeError, match="bundled weights exist only for"):
        validate_recipe({"data": {"root": "x"}, "backbone": {"name": "resnet18", "weights": "bundled"}})


def test_negative_workers_and_bad_cutout_holes_are_recipe_errors():
    with pytest.raises(RecipeError) as info:
        validate_recipe({"data": {"root": "x", "num_workers": -1}, "augment": {"cutout": {"holes": [2, 1]}}})
    assert "data.num_workers" in str(info.value) and "cutout.holes" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# tta


def test_tta_defaults_to_the_single_view():
    recipe = load_recipe(None, ["data.root=/data"])
    assert recipe.tta.policy == "none" and recipe.tta.aggregate == "mean_prob"


def test_custom_tta_fields_are_accepted_for_policy_custom():
    recipe = load_recipe(None, ["data.root=/data", "tta.policy=custom", "tta.crops=five", "tta.scales=[256, 320]"])
    assert recipe.tta.crops == "five" and recipe.tta.scales == [256, 320]


def test_tta_errors_are_reported_with_dotted_paths():
    with pytest.raises(RecipeError) as info:
        load_recipe(None, ["data.root=/data", "tta.policy=ten_crop", "tta.flip=false", "tta.aggregate=mean",
                           "tta.scale=[1]"])
    message = str(info.value)
    assert "tta.flip: only applies to policy: custom" in message
    assert "tta.aggregate: got 'mean'" in message
    assert "tta.scale: unknown key. Did you mean 'scales'?" in message


def test_misspelt_tta_policy_gets_did_you_mean():
    with pytest.raises(RecipeError, match="Did you mean 'multi_scale'"):
        load_recipe(None, ["data.root=/data", "tta.policy=multiscale"])


def test_python_defaults_are_the_recipe_defaults(colour_folder):
    """One definition per setting: a TransferModule built with no settings equals the one a minimal recipe
    (only data.root) builds, section by section and field by field."""
    from tlkit.model.module import TransferModule
    from tlkit.run import build_module

    recipe = validate_recipe({"data": {"root": str(colour_folder)}, "backbone": {"name": "test_resnet",
                                                                               "weights": "none"}})
    from_recipe = build_module(recipe, ["a", "b"]).hparams
    from_python = TransferModule("test_resnet", ["a", "b"], weights="none").hparams
    assert set(from_recipe) == set(from_python)
    for section in from_recipe:
        assert from_python[section] == from_recipe[section], section
    for section in ("strategy", "head", "optim", "schedule", "mixing"):  # and those are the recipe's own defaults
        assert from_python[section] == getattr(recipe, section).model_dump(mode="json"), section
