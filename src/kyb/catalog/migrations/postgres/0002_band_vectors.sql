-- Catalog schema v2: band vectors for the band search by meaning (kyb.bandsearch).
-- One row per band and embedding model, so vectors of two models can live side by side while one
-- replaces the other. text_sha is a digest of the text the vector was made from (a band is embedded
-- again only when it changes); country, status and formed_in are the band's filter fields as of
-- that moment, so the band index can be rebuilt from this table alone. vector: float16 bytes.

CREATE TABLE band_vectors (
    model      TEXT COLLATE "C" NOT NULL,
    band_id    TEXT COLLATE "C" NOT NULL REFERENCES bands (band_id) ON DELETE CASCADE,
    text_sha   TEXT NOT NULL,
    country    TEXT,
    status     TEXT,
    formed_in  INTEGER,
    vector     BYTEA NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model, band_id)
);

CREATE INDEX band_vectors_updated_idx ON band_vectors (model, updated_at);
CREATE INDEX bands_updated_idx ON bands (updated_at);
