"""ignitrain/distributed/collectives.py and launcher.py: the package face and the checks
of one process (the multi-process behaviour is in tests/test_distributed.py)."""

import pytest

import ignitrain.distributed as distributed
from ignitrain.distributed import collectives, launcher


def test_the_package_face_hands_on_every_name():
    for name in distributed.__all__:
        source = collectives if name in collectives.__all__ else launcher
        assert getattr(distributed, name) is getattr(source, name), name


def test_single_process_helpers_are_identities():
    assert distributed.world_size() == 1 and distributed.is_rank_zero()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(3) == [3]
    assert distributed.agree_any(True) and not distributed.agree_all(0)
    assert distributed.own_rank_state({"v": 1, "ranks": [{"v": 2}]}) == {"v": 1}


def test_bools_are_not_counts_or_seconds(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="src must be a rank in 0..0, got True"):
        distributed.broadcast_object(1, src=True)
    with pytest.raises(TypeError, match="timeout must be seconds"):
        distributed.launch(print, timeout=True)
    with pytest.raises(TypeError, match="master_port must be an int"):
        distributed.launch(print, master_port=False)
    with pytest.raises(TypeError, match="flag must be a bool"):
        distributed.agree_any(2)
