"""1-bit Adam, 0/1 Adam, 1-bit LAMB: the installed DeepSpeed (0.19.8) has removed them; preflight says so in one line
(moe/launch/environment.py)."""

import pytest

from moe.config import ConfigError, load_resolved
from moe.launch.environment import check_environment, deepspeed_has_onebit
from tests.helpers import REPO


def checked(optimizer: str, cuda: bool = False):
    resolved = load_resolved(
        REPO / "recipes/tiny.yaml", REPO / "ds_configs/zero1.json", [f"ds.optimizer.type={optimizer}"], 2, cuda=cuda
    )
    check_environment(resolved, cuda)
    return resolved


def test_the_pinned_deepspeed_has_no_compressed_communication_optimizers():
    import deepspeed
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    assert not deepspeed_has_onebit()
    assert not {"onebitadam", "zerooneadam", "onebitlamb"} & set(DEEPSPEED_OPTIMIZERS), deepspeed.__version__


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("optimizer", ["OneBitAdam", "ZeroOneAdam", "OneBitLamb"])
def test_refused_before_any_rank_on_cpu_and_gpu(optimizer, cuda):
    with pytest.raises(ConfigError) as e:
        checked(optimizer, cuda)
    message = str(e.value)
    assert (
        message.startswith(f"optimizer.type={optimizer} in {REPO / 'ds_configs/zero1.json'}")
        and "has removed" in message
    )
    assert "use optimizer.type=AdamW" in message and "\n" not in message


def test_other_optimizers_pass():
    assert checked("Adam").ds_config["optimizer"]["type"] == "Adam"
