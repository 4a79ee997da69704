"""1-bit Adam, 0/1 Adam, 1-bit LAMB: the installed DeepSpeed (0.19.8) has removed them; resolve says so in one line."""
import pytest

from moe.config import ConfigError, load_ds_config, load_recipe, resolve
from moe.config.compressed_comm import deepspeed_has_onebit
from tests.helpers import REPO


def test_the_pinned_deepspeed_has_no_compressed_communication_optimizers():
    import deepspeed
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    assert not deepspeed_has_onebit()
    assert not {"onebitadam", "zerooneadam", "onebitlamb"} & set(DEEPSPEED_OPTIMIZERS), deepspeed.__version__


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("optimizer", ["OneBitAdam", "ZeroOneAdam", "OneBitLamb"])
def test_refused_before_any_rank_on_cpu_and_gpu(optimizer, cuda):
    ds = load_ds_config(REPO / "ds_configs/zero1.json", [f"optimizer.type={optimizer}"])
    with pytest.raises(ConfigError) as e:
        resolve(load_recipe(REPO / "recipes/tiny.yaml"), ds, 2, "c.json", cuda=cuda)
    message = str(e.value)
    assert message.startswith(f"optimizer.type={optimizer} in c.json") and "has removed" in message
    assert "use optimizer.type=AdamW" in message and "\n" not in message


def test_other_optimizers_pass():
    ds = load_ds_config(REPO / "ds_configs/zero1.json", ["optimizer.type=Adam"])
    assert resolve(load_recipe(REPO / "recipes/tiny.yaml"), ds, 2, "c.json").ds_config["optimizer"]["type"] == "Adam"
