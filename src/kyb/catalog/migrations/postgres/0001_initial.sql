-- Catalog schema v1 for Postgres: bands, albums, reference images and the ingestion log.
-- List-valued fields are JSONB arrays. name_norm is the folded name the search uses
-- (NFKD, no combining marks, casefolded; see kyb.catalog.normalize_name); it has a trigram index for
-- substring (LIKE '%q%') and fuzzy (similarity) search. Sorted text columns use the "C" collation so
-- that ordering is by code point, as in the SQLite backend, whatever the database's locale.
-- The schema_version table is created by the migration runner, not here.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE bands (
    band_id         TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT NOT NULL,
    name_norm       TEXT COLLATE "C" NOT NULL,
    country         TEXT,
    location        TEXT,
    status          TEXT,
    formed_in       INTEGER,
    genre           TEXT,
    themes          JSONB NOT NULL DEFAULT '[]'::jsonb,
    label           TEXT,
    years_active    TEXT,
    members         JSONB NOT NULL DEFAULT '[]'::jsonb,
    similar_artists JSONB NOT NULL DEFAULT '[]'::jsonb,
    links           JSONB NOT NULL DEFAULT '[]'::jsonb,
    logo_url        TEXT,
    updated_at      DOUBLE PRECISION NOT NULL
);

CREATE INDEX bands_name_norm_idx ON bands (name_norm);
CREATE INDEX bands_name_norm_trgm_idx ON bands USING GIN (name_norm gin_trgm_ops);

CREATE TABLE albums (
    album_id   TEXT COLLATE "C" PRIMARY KEY,
    band_id    TEXT COLLATE "C" NOT NULL REFERENCES bands (band_id) ON DELETE CASCADE,
    title      TEXT COLLATE "C" NOT NULL,
    year       INTEGER,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX albums_band_id_idx ON albums (band_id);

CREATE TABLE reference_images (
    reference_id TEXT COLLATE "C" PRIMARY KEY,
    sha256       TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('logo', 'album_cover')),
    band_id      TEXT COLLATE "C" REFERENCES bands (band_id) ON DELETE CASCADE,
    album_id     TEXT COLLATE "C" REFERENCES albums (album_id) ON DELETE CASCADE,
    source       TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    size_bytes   BIGINT NOT NULL,
    regions      JSONB NOT NULL DEFAULT '[]'::jsonb,
    created_at   DOUBLE PRECISION NOT NULL
);

CREATE INDEX reference_images_sha256_idx ON reference_images (sha256, created_at, reference_id);
CREATE INDEX reference_images_band_id_idx ON reference_images (band_id);
CREATE INDEX reference_images_created_idx ON reference_images (created_at, reference_id);

-- No foreign key on purpose: the log must outlive deleted references and record failed ingestions.
CREATE TABLE ingestions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference_id TEXT,
    sha256       TEXT,
    status       TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    created_at   DOUBLE PRECISION NOT NULL
);

CREATE INDEX ingestions_created_idx ON ingestions (created_at);
