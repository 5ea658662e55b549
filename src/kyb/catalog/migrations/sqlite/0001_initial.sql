-- Catalog schema v1: bands, albums, reference images and the ingestion log.
-- List-valued fields are JSON arrays stored as TEXT. name_norm is the folded name the search uses
-- (NFKD, no combining marks, casefolded; see kyb.catalog.normalize_name).
-- The schema_version table is created by the migration runner, not here.

CREATE TABLE bands (
    band_id         TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    name_norm       TEXT NOT NULL,
    country         TEXT,
    location        TEXT,
    status          TEXT,
    formed_in       INTEGER,
    genre           TEXT,
    themes          TEXT NOT NULL DEFAULT '[]',
    label           TEXT,
    years_active    TEXT,
    members         TEXT NOT NULL DEFAULT '[]',
    similar_artists TEXT NOT NULL DEFAULT '[]',
    links           TEXT NOT NULL DEFAULT '[]',
    logo_url        TEXT,
    updated_at      REAL NOT NULL
);

CREATE INDEX bands_name_norm_idx ON bands (name_norm);

CREATE TABLE albums (
    album_id   TEXT PRIMARY KEY,
    band_id    TEXT NOT NULL REFERENCES bands (band_id) ON DELETE CASCADE,
    title      TEXT NOT NULL,
    year       INTEGER,
    updated_at REAL NOT NULL
);

CREATE INDEX albums_band_id_idx ON albums (band_id);

CREATE TABLE reference_images (
    reference_id TEXT PRIMARY KEY,
    sha256       TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('logo', 'album_cover')),
    band_id      TEXT REFERENCES bands (band_id) ON DELETE CASCADE,
    album_id     TEXT REFERENCES albums (album_id) ON DELETE CASCADE,
    source       TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    size_bytes   INTEGER NOT NULL,
    regions      TEXT NOT NULL DEFAULT '[]',
    created_at   REAL NOT NULL
);

CREATE INDEX reference_images_sha256_idx ON reference_images (sha256);
CREATE INDEX reference_images_band_id_idx ON reference_images (band_id);
CREATE INDEX reference_images_created_idx ON reference_images (created_at, reference_id);

-- No foreign key on purpose: the log must outlive deleted references and record failed ingestions.
CREATE TABLE ingestions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    reference_id TEXT,
    sha256       TEXT,
    status       TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL
);

CREATE INDEX ingestions_created_idx ON ingestions (created_at);
