"""An app root, scratch and a directory Volume in tmp_path, configured the way the `fractfs` command reads
them, for the in-process tests of the operator modules (report, explain, doctor, layout, restore_target)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fractfs import snapshot
from fractfs.config import Config, load_config
from fractfs.selection import Selection, areas_for
from fractfs.stores.open import open_store
from fractfs.tiers import TierResolver

CONFIG = """\
[dirs]
paths = ["data/blobs"]
[local]
patterns = ["manifest.json", "*.sqlite"]
[ignore]
patterns = ["*.tmp", ".locks/"]
"""


def env_for(base: Path, volume: Optional[Path] = None) -> dict[str, str]:
    """The fractfs_* variables of an app under ``base`` whose Volume is ``volume`` (default base/volume)."""
    return {"fractfs_VOLUME_ROOT": str(volume if volume is not None else base / "volume"),
            "fractfs_SCRATCH": str(base / "scratch")}


def make_app(base: Path, config: str = CONFIG, *, volume: bool = True) -> Config:
    """``base/app`` with ``config`` as .fractfs.toml; ``base/volume`` created unless ``volume`` is False."""
    root = base / "app"
    root.mkdir(parents=True, exist_ok=True)
    (root / ".fractfs.toml").write_text(config)
    if volume:
        (base / "volume").mkdir(exist_ok=True)
    return load_config(root, env=env_for(base))


def take_snapshot(cfg: Config, bundle: frozenset[str] = frozenset()) -> str:
    """One checkpoint of the app's areas with the app's selection, as `fractfs sync` takes it; its id."""
    res = snapshot.checkpoint(open_store(cfg), areas_for(cfg), Selection(cfg, TierResolver(cfg), bundle),
                              state_dir=cfg.state_dir, node_id="test-node")
    assert res.snapshot_id is not None
    return res.snapshot_id
