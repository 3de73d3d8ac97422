"""include/node/wheelname.py against the device's real torch: the causal-conv1d wheel that would fit,
and why the seed's cu12/torch2.8 wheel does not."""
import re

import pytest

from tests.gpu._helpers import record, run_node

pytestmark = pytest.mark.gpu


def test_wheel_name_from_the_real_torch():
    rc, r, _, err = run_node("wheelname.py", timeout=300)
    record("wheelname", r)
    assert rc == 0, err[-2000:]
    t = r["torch"]
    assert t["version"] and t["cuda"], t
    mm = ".".join(t["version"].split(".")[:2])
    cu = t["cuda"].split(".")[0]
    abi = "TRUE" if t["cxx11abi"] else "FALSE"
    assert r["wheel"] == "causal_conv1d-1.5.4+cu%storch%scxx11abi%s-%s-%s-linux_x86_64.whl" % (
        cu, mm, abi, t["python_tag"], t["python_tag"])
    assert r["seed_wheel"] == \
        "causal_conv1d-1.5.4+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    if (mm, cu) != ("2.8", "12"):
        assert r["matches_seed"] is False
        assert r["problems"] and r["problems"][0].startswith("torch %s" % mm)
    record("wheelname summary", {"wheel": r["wheel"], "matches_seed": r["matches_seed"],
                                 "problems": r["problems"]})
