"""`torchrun --nproc_per_node N -m bench run …`: the ranks of one bench job, coordinated through torchrun's own
key-value store (no process group, no collectives: a rank that ends early or dies can never leave another blocked
inside a collective).

Detection: torchrun's environment (WORLD_SIZE > 1, RANK, LOCAL_RANK). Each rank benches shard RANK of WORLD_SIZE
of the images (the `--shard` partition, by a hash of the image id; with a user's `--shard i/N`, shard i + N·RANK of
N·WORLD_SIZE, which splits exactly shard i) on `cuda:LOCAL_RANK` (device auto or cuda, when CUDA exists; else the CPU)
and publishes Parquet parts, like a `--shard` process. Rank 0 also merges: every `--merge-seconds` while it runs and
while it waits for the others, and once at the end, after every other rank has reported (unless the user gave
`--shard`: then parts only, as always). One `bench_runs` row for the whole job, written by rank 0, whose id every
rank's rows carry; rank 0 prints the job's summary and carries its exit code (1 when any rank left something out);
the other ranks exit 0 once they have reported, so that torchrun never stops rank 0 during its last merge.

Failures: a rank that raises or is interrupted exits non-zero and torchrun stops the others (SIGTERM: they publish
their rows, exit 143). A rank that stops responding without exiting (a lost node) is noticed through heartbeats:
after STALL_S seconds without one, the ranks waiting on it fail with RankLost (one line, exit 1); rows published so
far stay in parts or the DB and the same command resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, Mapping

HEARTBEAT_S = 2.0  # each rank bumps its heartbeat counter this often (a daemon thread)
STALL_S = 300.0  # a rank whose counter did not move for this long is lost
POLL_S = 0.2
CONNECT_TIMEOUT_S = 300.0


class RankLost(RuntimeError):
    """Another rank of the torchrun job stopped responding."""


@dataclasses.dataclass
class Torchrun:
    rank: int
    world_size: int
    local_rank: int
    restart: int = 0
    user_shard: tuple[int, int] | None = None
    store: object = None
    _beat: threading.Event | None = None

    # -- options -----------------------------------------------------------------------------------------------
    def shard(self, user: tuple[int, int] | None) -> tuple[int, int]:
        """This rank's shard: RANK/WORLD_SIZE, or of a user's shard i/N the part i + N·RANK of N·WORLD_SIZE."""
        i, n = user or (0, 1)
        return i + n * self.rank, n * self.world_size

    def device(self, name: str) -> str:
        """`auto` / `cuda`: this rank's GPU, cuda:LOCAL_RANK (modulo the GPUs there are); others as given."""
        import torch

        if name in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu" if name == "auto" else name

    def adapt(self, opts):
        """The run options of this rank (shard, device; progress bars on rank 0 only)."""
        self.user_shard = opts.shard
        return dataclasses.replace(opts, shard=self.shard(opts.shard), device=self.device(opts.device),
                                   progress=opts.progress and self.rank == 0)

    def record(self) -> dict:
        """What `bench_runs.options` says about the job: the user's shard (or null) and the world size."""
        s = self.user_shard
        return {"shard": f"{s[0]}/{s[1]}" if s else None, "torchrun": {"world_size": self.world_size}}

    def logger(self) -> Callable[[str], None]:
        prefix = f"[rank {self.rank}/{self.world_size}] "
        return lambda msg: print(prefix + msg, file=sys.stderr, flush=True)

    # -- the store -----------------------------------------------------------------------------------------------
    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> "Torchrun":
        """Join torchrun's store (the agent's, or rank 0's for a launcher without an agent store); start beating."""
        import torch.distributed as dist

        base, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
        # keys of an earlier attempt (torchrun --max-restarts) must not be read as this one's
        self.store = dist.PrefixStore(f"agezoo-bench/{self.restart}/", base)
        self._start_heartbeat()
        return self

    def _start_heartbeat(self) -> None:
        self.store.add(f"hb/{self.rank}", 1)
        stop = self._beat = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    self.store.add(f"hb/{self.rank}", 1)
                except Exception:  # the store is gone (the job is ending): nothing to tell anyone
                    return

        threading.Thread(target=beat, name="bench-heartbeat", daemon=True).start()

    def close(self) -> None:
        if self._beat is not None:
            self._beat.set()

    def wait(self, keys: list[str], watch: Callable[[], list[int]], on_tick: Callable[[], None] | None = None,
             stall_s: float | None = None) -> None:
        """Until every key is set; `on_tick` between polls; RankLost when a rank in `watch()` stops beating."""
        stall_s = STALL_S if stall_s is None else stall_s
        seen: dict[int, tuple[int, float]] = {}
        while not self.store.check(keys):
            if on_tick is not None:
                on_tick()
            now = time.monotonic()
            for r in watch():
                count = self.store.add(f"hb/{r}", 0)
                if r not in seen or seen[r][0] != count:
                    seen[r] = (count, now)
                elif now - seen[r][1] > stall_s:
                    raise RankLost(f"rank {r} of {self.world_size} stopped responding (no heartbeat for "
                                   f"{stall_s:.0f} s); rows published so far are kept: run the same command again "
                                   "to resume")
            time.sleep(POLL_S)

    def share_run_id(self, run_id: str) -> str:
        """Rank 0's run id (published once its bench_runs row is written), the same on every rank."""
        if self.rank == 0:
            self.store.set("run_id", run_id)
            return run_id
        self.wait(["run_id"], lambda: [0])
        return self.store.get("run_id").decode()

    def report(self, summary: Mapping) -> None:
        """A rank other than 0: its summary, for rank 0."""
        self.store.set(f"done/{self.rank}", json.dumps(summary, default=str))

    def gather(self, on_tick: Callable[[], None] | None = None) -> list[dict]:
        """Rank 0: the summaries of every other rank, waiting for them (`on_tick` meanwhile)."""
        others = range(1, self.world_size)
        self.wait([f"done/{r}" for r in others],
                  lambda: [r for r in others if not self.store.check([f"done/{r}"])], on_tick)
        return [json.loads(self.store.get(f"done/{r}")) for r in others]


def from_env(environ: Mapping[str, str] = os.environ) -> Torchrun | None:
    """The torchrun job this process is a rank of, or None (WORLD_SIZE absent or 1); ValueError for a broken
    environment."""
    try:
        world = int(environ.get("WORLD_SIZE") or 1)
        if world <= 1:
            return None
        rank = int(environ["RANK"])
        local = int(environ.get("LOCAL_RANK") or rank)
        restart = int(environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except (KeyError, ValueError) as e:
        raise ValueError(f"torchrun environment: WORLD_SIZE, RANK and LOCAL_RANK must be integers ({e!r})") from None
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun environment: RANK {rank} outside 0..{world - 1}")
    return Torchrun(rank, world, local, restart)
