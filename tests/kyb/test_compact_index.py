"""Compact references: residual codes verify what int8 descriptors verify; old indexes load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kyb import synth
from kyb.engine import Engine
from kyb.index import ReferenceIndex
from kyb.index._residuals import ResidualQuantizer
from tests.conftest import Library, encode_jpeg, make_config


@pytest.fixture(scope="module")
def raw_and_compact(library: Library, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Engine]:
    """The library ingested with int8 descriptors, and the same index loaded with residual codes."""
    root = tmp_path_factory.mktemp("raw")
    raw = Engine(make_config(root, search={"residual_bits": -1}))
    library.seed_catalog(raw)
    raw.ingest(library.items())
    assert raw.index.stats()["residual_bits"] == -1
    compact = Engine(make_config(root, search={"residual_bits": 1}))
    assert compact.index.stats()["residual_bits"] == 1
    return raw, compact


def test_residual_codes_keep_each_signature_and_most_of_the_descriptor(library: Library) -> None:
    index = Engine(library.config).index
    codebook = index.codebook
    rng = np.random.default_rng(0)
    descriptors = np.concatenate([index.encoding(r).descriptors for r in index.reference_ids()])
    words = np.concatenate([index.encoding(r).words for r in index.reference_ids()])
    # Fresh descriptors (not decoded ones): real ones moved by noise, each keeping its word.
    noisy = np.clip(descriptors.astype(np.int16) + rng.integers(-6, 7, descriptors.shape), -127, 127).astype(np.int8)
    for bits in (0, 1, 2):
        quantizer = ResidualQuantizer.train(codebook, noisy, words, bits)
        codes = quantizer.encode(codebook, noisy, words)
        assert codes.shape == (len(words), quantizer.code_bytes) and quantizer.code_bytes == 8 * bits
        signatures = codebook.signatures(noisy, words)
        decoded = quantizer.decode(codebook, codes, words, signatures)
        assert np.array_equal(codebook.signatures(decoded, words), signatures)  # the sign of every residual
        error = np.square(codebook.dequantize(decoded) - codebook.dequantize(noisy)).sum(axis=1).mean()
        spread = np.square(codebook.dequantize(noisy) - codebook.words[words]).sum(axis=1).mean()
        assert error < [0.45, 0.2, 0.1][bits] * spread, (bits, error / spread)
        if bits == 1:  # encoding a decoded reference again (a copy to another shard) keeps it
            again = quantizer.encode(codebook, decoded, words)
            assert np.mean(np.all(again == codes, axis=1)) > 0.999


def _scene(library: Library, names: list[str], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    refs = [{**library.covers, **library.logos}[n] for n in names]
    scene, _ = synth.compose_scene(
        refs,
        rng,
        size=(1024, 768),
        style=synth.SceneStyle(perspective=0.1, rotation_deg=15, scale=(0.3, 0.45), glare=0.0, occlusion=0.0),
        background=synth.draw_background(rng),
    )
    return encode_jpeg(scene, 85)


def test_compressed_references_verify_the_same_objects(library: Library, raw_and_compact) -> None:
    raw, compact = raw_and_compact
    covers, logos = sorted(library.covers), sorted(library.logos)
    photos = [[covers[0]], [covers[1], covers[2]], [logos[0]], [logos[1], covers[3]]]
    found = 0
    for seed, names in enumerate(photos):
        data = _scene(library, names, 100 + seed)
        before, after = raw.identify(data).objects, compact.identify(data).objects
        assert [o.best.reference_id for o in after] == [o.best.reference_id for o in before], names
        for old, new in zip(before, after, strict=True):
            assert np.abs(np.array(new.outline) - np.array(old.outline)).max() < 4
            assert abs(new.best.inliers - old.best.inliers) <= max(3, 0.2 * old.best.inliers)
        found += len(after)
    assert found >= 5


def _as_format_1(index_dir: Path) -> None:
    """Rewrites the current generation of an index saved with int8 descriptors exactly as the first
    format stored it: no quantizer, digests as unicode, manifest format 1."""
    folder = index_dir / (index_dir / "CURRENT").read_text().strip()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest.pop("residual_bits") is None
    manifest["format"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for entry in manifest["segments"]:
        path = folder / entry["file"]
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        assert set(arrays) == {
            "ordinals", "ref_ids", "sha256", "offsets", "xy", "descriptors", "words", "region", "global_vectors",
            "signatures",
        }  # fmt: skip
        arrays["sha256"] = arrays["sha256"].astype(str)
        path.unlink()  # hard-linked between generations: write a new file, not into the shared one
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)


def test_an_index_of_the_first_format_loads_converted_and_saves_in_the_new_one(
    library: Library, raw_and_compact, tmp_path: Path
) -> None:
    raw, _ = raw_and_compact
    old = tmp_path / "index"
    shutil.copytree(raw.config.index_dir, old)
    _as_format_1(old)
    photo = _scene(library, [sorted(library.covers)[0]], 7)
    expected = [o.best.reference_id for o in raw.identify(photo).objects]
    assert expected

    config = make_config(tmp_path, catalog_url=raw.config.catalog_url, search={"residual_bits": 1})
    index = ReferenceIndex.load(old, config.search)
    assert index.stats()["residual_bits"] == 1
    assert sorted(index.reference_ids()) == sorted(raw.index.reference_ids())
    for key in index.reference_ids():
        assert index.sha256_of(key) == raw.index.sha256_of(key)
        assert np.array_equal(index.features(key).words, raw.index.features(key).words)
        assert np.array_equal(index.encoding(key).global_vector, raw.index.encoding(key).global_vector)
    engine = Engine(config)
    assert [o.best.reference_id for o in engine.identify(photo).objects] == expected

    # Read as is with int8 descriptors when asked to; written in the new format by the next save.
    assert (
        ReferenceIndex.load(old, make_config(tmp_path, search={"residual_bits": -1}).search).stats()["residual_bits"]
        == -1
    )
    index.save()
    folder = old / (old / "CURRENT").read_text().strip()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["residual_bits"] == 1 and (folder / "residuals.npz").exists()
    with np.load(folder / manifest["segments"][0]["file"]) as data:
        assert "residual_codes" in data.files and "descriptors" not in data.files
    again = ReferenceIndex.load(old, config.search)
    for key in again.reference_ids():
        assert np.array_equal(again.features(key).descriptors, index.features(key).descriptors)
