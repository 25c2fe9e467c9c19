"""What the ranks of one MPI run must agree on before training: each rank resolves its own config (its
host's copy of the file, its own command line) and reads its own checkpoint to resume, so a copy out
of step would train other batches, rates or weights than rank 0's, or wait for it forever. Not the
data's check (rundata.same_data_as_rank0), nor MPI itself (distributed.py).
"""

from __future__ import annotations

import zlib

from cnncli.config_text import show
from cnncli.errors import CheckpointError, ConfigError

# Keys a rank may set on its own: rank 0's folder is the run's; the threads and the dataset cache leave
# the bits alone; of the paths, what they hold is compared (the images by rundata.data_fingerprint,
# init_from's arrays by agree_on_source; rank 0 alone tests).
RANK_OWN = frozenset({"out", "train.threads", "data.cache", "data.train", "data.val", "data.test", "train.init_from"})


def config_values(cfg: dict, prefix: str = "") -> dict:
    """The config's leaves as {dotted key: value}, without the keys of RANK_OWN."""
    out = {}
    for key, value in cfg.items():
        name = prefix + str(key)
        if name in RANK_OWN:
            continue
        if isinstance(value, dict) and value:
            out.update(config_values(value, name + "."))
        else:
            out[name] = value
    return out


def same_config_as_rank0(mine: dict, first: dict) -> None:
    """ConfigError naming the first key whose value differs from rank 0's (`mine`, `first`: config_values)."""
    differ = [k for k in sorted(first.keys() | mine.keys()) if repr(mine.get(k)) != repr(first.get(k))]  # (nan)
    if not differ:
        return
    key = differ[0]
    raise ConfigError(f"the config this rank read differs from rank 0's ({key}: {show(mine.get(key))} here, "
                      f"{show(first.get(key))} on rank 0): every rank must run the same config (a copy out of step "
                      "on this host, or another command line?)")


def agree_on_config(comm, cfg: dict) -> None:
    """Under mpirun: every rank compares its config with rank 0's; a rank whose config differs ends the
    job with one line naming itself and the key (before any data is read)."""
    from cnncli.distributed import everyone

    if comm.size > 1:
        mine = config_values(cfg)
        everyone(comm, same_config_as_rank0, mine, comm.bcast(mine))


def checkpoint_values(arrays: dict, state=None) -> dict:
    """What a checkpoint holds for the steps to come: a CRC-32 of its arrays, and where a resumed run stands."""
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(arrays[name].tobytes(), zlib.crc32(name.encode(), crc))
    return {"epoch": state and state.epoch, "step": state and state.step, "checksum": crc}


def same_checkpoint_as_rank0(mine: dict, first: dict, what: str, error=CheckpointError) -> None:
    """`error` when this rank's checkpoint differs from rank 0's (checkpoint_values; `what` names it)."""
    if mine == first:
        return
    detail = ("its arrays differ" if mine["step"] == first["step"] else
              f"step {mine['step']:,} (epoch {mine['epoch']}) here, {first['step']:,} (epoch {first['epoch']}) "
              "on rank 0")
    raise error(f"{what} differs from rank 0's ({detail}): every rank must read the same file (on several "
                "machines, a shared file system; a copy out of step here?)")


def agree_on_checkpoint(comm, arrays, state=None, what="the checkpoint this rank resumes", error=CheckpointError):
    """Under mpirun: every rank compares the checkpoint it read (`arrays`; None: none, on every rank) with
    rank 0's; a rank whose checkpoint differs ends the job with one line naming itself."""
    from cnncli.distributed import everyone

    if comm.size > 1 and arrays is not None:
        mine = checkpoint_values(arrays, state)
        everyone(comm, same_checkpoint_as_rank0, mine, comm.bcast(mine), what, error)


def agree_on_source(comm, source) -> None:
    """agree_on_checkpoint for train.init_from's checkpoint (warmstart.Source, or None: the key is unset)."""
    if source is not None:
        agree_on_checkpoint(comm, source.arrays, what="train.init_from: the checkpoint this rank read",
                            error=ConfigError)
