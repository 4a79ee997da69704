"""The pinned transformers must work with DeepSpeed AutoEP (5.23.0 breaks it); 2 real gloo ranks."""
import json
import re
from importlib.metadata import version

import pytest

from tests.helpers import REPO, explain, run_distributed

pytestmark = pytest.mark.distributed


def test_installed_transformers_is_the_pinned_one():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    assert version("transformers") == pins["transformers"]


def test_autoep_mixtral_matches_plain_hf_forward_under_zero1_and_zero3(tmp_path):
    proc = run_distributed(REPO / "tests/distributed/autoep_worker.py", str(tmp_path), ranks=2)
    assert proc.returncode == 0, explain(proc)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 4
    for name, r in results.items():
        assert r["moe_layer"] == "AutoEPMoELayer", name  # the HF sparse MoE block was swapped for AutoEP's
        assert r["losses"][0] == pytest.approx(r["reference"], rel=1e-6), name
    for rank in (0, 1):  # ZeRO-3 trains like ZeRO-1
        assert results[f"rank{rank}_zero3"]["losses"] == pytest.approx(results[f"rank{rank}_zero1"]["losses"],
                                                                       rel=1e-5)
