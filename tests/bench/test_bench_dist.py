"""`torchrun … -m bench run` coordination (bench/dist.py) without processes: environment, shards, devices, waits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import dist
from bench.run import RunOptions, shard_mask


class FakeStore:
    """The part of torch's Store API the ranks use."""

    def __init__(self):
        self.kv: dict[str, bytes] = {}

    def set(self, k, v):
        self.kv[k] = v.encode() if isinstance(v, str) else v

    def get(self, k):
        return self.kv[k]

    def check(self, keys):
        return all(k in self.kv for k in keys)

    def add(self, k, n):
        self.kv[k] = str(int(self.kv.get(k, b"0")) + n).encode()
        return int(self.kv[k])


def test_torchrun_environment():
    assert dist.from_env({}) is None and dist.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    t = dist.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"})
    assert (t.rank, t.world_size, t.local_rank, t.restart) == (3, 4, 1, 2)
    for bad in ({"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "x"}, {"WORLD_SIZE": "2", "RANK": "2"}):
        with pytest.raises(ValueError, match="torchrun environment"):
            dist.from_env(bad)


def test_ranks_partition_the_images_and_a_users_shard():
    ids = pd.Series([f"{i:016x}" for i in range(2000)])
    world = [dist.Torchrun(r, 3, r) for r in range(3)]
    masks = [shard_mask(ids, t.shard(None)) for t in world]
    assert (np.sum(masks, axis=0) == 1).all() and all(m.sum() > 550 for m in masks)
    # torchrun on one machine of `--shard 1/2`: its ranks split exactly shard 1 of 2
    sub = [shard_mask(ids, t.shard((1, 2))) for t in world]
    assert (np.sum(sub, axis=0) == shard_mask(ids, (1, 2))).all() and all(m.sum() > 250 for m in sub)
    opts = world[2].adapt(RunOptions(shard=(1, 2), device="cpu"))
    assert opts.shard == (5, 6) and opts.device == "cpu" and opts.progress is False
    assert world[0].adapt(RunOptions(device="cpu")).progress is True
    assert world[2].record() == {"shard": "1/2", "torchrun": {"world_size": 3}}


def test_device_per_rank_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    t = dist.Torchrun(1, 2, 1)
    assert (t.device("auto"), t.device("cpu"), t.device("cuda"), t.device("cuda:0")) == ("cpu", "cpu", "cuda",
                                                                                         "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [dist.Torchrun(r, 3, r).device("auto") for r in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert t.device("cuda") == "cuda:1" and t.device("cuda:0") == "cuda:0"


def test_run_id_summaries_and_a_rank_that_stops_beating(monkeypatch):
    monkeypatch.setattr(dist, "POLL_S", 0.01)
    store = FakeStore()
    r0, r1 = dist.Torchrun(0, 2, 0, store=store), dist.Torchrun(1, 2, 1, store=store)
    assert r0.share_run_id("abc") == "abc" and r1.share_run_id("xyz") == "abc"
    r1.report({"rows": 5, "skipped": {}})
    assert r0.gather() == [{"rows": 5, "skipped": {}}]
    # rank 2 of 3 never reports and its heartbeat stands still: rank 0 gives up with RankLost, merging meanwhile
    r0 = dist.Torchrun(0, 3, 0, store=store)
    ticks = []
    with pytest.raises(dist.RankLost, match="rank 2 of 3 stopped responding"):
        r0.wait(["done/2"], lambda: [2], on_tick=lambda: ticks.append(1), stall_s=0.1)
    assert len(ticks) > 3
    # a rank that keeps beating is waited for
    beats = iter(range(1000))
    monkeypatch.setattr(store, "add", lambda k, n: next(beats))
    calls = []

    def tick():
        calls.append(1)
        if len(calls) == 30:
            store.set("done/2", "{}")

    r0.wait(["done/2"], lambda: [2], on_tick=tick, stall_s=0.05)
    assert len(calls) == 30
