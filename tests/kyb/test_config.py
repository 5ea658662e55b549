"""Configuration: one typed schema from file, environment and overrides; bad fields named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kyb.config import load_config
from kyb.errors import ConfigError


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "kyb.toml"
    path.write_text('index_dir = "/data/index"\n[search]\nmin_inliers = 20\nratio = 0.8\n')
    config = load_config(path, env={"KYB_SEARCH__MIN_INLIERS": "18"}, overrides={"search.ratio": 0.75})
    assert config.index_dir == Path("/data/index")
    assert config.search.min_inliers == 18
    assert config.search.ratio == 0.75


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"KYB_SEARCH__MIN_INLIERS": "many"}, "search.min_inliers"),
        ({"KYB_SEARCH__RATIO": "3"}, "search.ratio"),
        ({"KYB_SEARCH__PREFILTER_INLIERS": "11"}, "search.prefilter_inliers"),  # above min_inliers
        ({"KYB_SEARCH__PREFILTER_RATIO": "1.2"}, "search.prefilter_ratio"),
        ({"KYB_SEARCH__VOTE_THREADS": "0"}, "search.vote_threads"),
        ({"KYB_SEARCH__VERIFY_THREADS": "0"}, "search.verify_threads"),
        ({"KYB_FEATURES__QUERY_ASSIGN_EF": "2"}, "features.query_assign_ef"),
        ({"KYB_FEATURES__QUERY_ASSIGN_THREADS": "0"}, "features.query_assign_threads"),
        ({"KYB_SEARCH__NOPE": "1"}, "search.nope"),
        ({"KYB_LIMITS__MAX_BYTES": "-1"}, "limits.max_bytes"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config(env=env)
