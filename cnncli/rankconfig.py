"""What the ranks of one MPI run must agree on in their config: each rank resolves its own (its host's
copy of the config file, its own command line), so a copy out of step would train on other batches,
rates or shapes than rank 0's. Not the data's check (runsetup.same_data_as_rank0), nor MPI itself.
"""

from __future__ import annotations

from cnncli.config_text import show
from cnncli.errors import ConfigError

# Keys a rank may set on its own: rank 0's folder is the run's; the threads, the dataset cache and the
# folders' paths (their images are compared by runsetup.data_fingerprint; rank 0 alone tests) leave the
# bits alone.
RANK_OWN = frozenset({"out", "train.threads", "data.cache", "data.train", "data.val", "data.test"})


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
