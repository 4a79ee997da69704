import pytest

from moe.config import ConfigError, load_recipe
from moe.config.loader import apply_override, from_dict
from moe.config.schema import MoEConfig, Recipe
from tests.helpers import REPO


def test_unknown_key_names_the_key_and_the_allowed_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("moe:\n  num_expert: 8\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "'moe.num_expert'" in msg and "num_experts" in msg and "ep_size" in msg and "\n" not in msg


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown key 'trainer'.*allowed keys: model, moe, data"):
        from_dict(Recipe, {"trainer": {}}, where="x")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("moe.num_experts=eight", "'moe.num_experts' must be int or a list of int, got str"),
        ("moe.drop_tokens=1", "'moe.drop_tokens' must be bool, got int"),
        ("data.files=a.txt", "'data.files' must be a list"),
        ("moe=3", "'moe' must be a mapping"),
    ],
)
def test_wrong_types_are_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_recipe(None, [override])


def test_overrides_parse_as_yaml_and_coerce_numbers():
    r = load_recipe(
        REPO / "recipes/default.yaml",
        [
            "moe.num_experts=16",
            "optim.lr=1e-3",
            "model.norm_eps=1",
            "moe.noisy_gate_policy=Jitter",
            "train.grad_clip=null",
        ],
    )
    assert r.moe.num_experts == 16 and r.optim.lr == 1e-3 and isinstance(r.model.norm_eps, float)
    assert r.moe.noisy_gate_policy == "Jitter" and r.train.grad_clip is None


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "moe.num_experts")


def test_defaults_are_a_valid_recipe():
    r = load_recipe(None)
    assert isinstance(r.moe, MoEConfig) and r.moe.enabled


def test_missing_or_broken_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
