"""conf/ composed from Python as the `rnnsweep` command composes it: Hydra's compose API, with
Hydra's global state left as it was found. Used by the Python API and rnnsweep-evaluate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig


def refuse_sweeps(overrides: Sequence[str]) -> None:
    """One job is composed here: a sweep (`-m`, `seed=0,1`, `range(3)`) is refused by name."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from . import config

    for override in overrides:
        if override in ("-m", "--multirun"):
            raise config.ConfigError(f"'{override}': rnnsweep.train runs one job; loop over the values in Python, "
                                     "or sweep with the command: rnnsweep -m ...")
        try:
            parsed = OverridesParser.create().parse_override(override)
        except HydraException:
            continue  # composing reports it, in the command's words
        if parsed.is_sweep_override():
            raise config.ConfigError(f"'{override}' is a sweep; rnnsweep.train runs one job: loop over the values "
                                     f"in Python (for v in ...: rnnsweep.train(f\"{parsed.key_or_group}={{v}}\")), "
                                     "or sweep with the command: rnnsweep -m ...")


def compose(overrides: Sequence[str], *, hydra_config: bool = False) -> "DictConfig":
    """conf/ plus `overrides`, composed as the `rnnsweep` command composes them. `hydra_config`:
    keep the `hydra` node (run directory, the groups' choices). Hydra's global state is restored
    afterwards. A bad override raises config.ConfigError with the command's one-line message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    from . import cli, config  # cli registers the config schema conf/config.yaml names

    refuse_sweeps(overrides)
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=cli.config_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as ex:
        raise config.ConfigError(cli.describe(ex)) from ex
    finally:
        restore_gh_from_backup(backup)
