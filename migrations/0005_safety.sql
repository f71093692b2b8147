-- Safety: hazard taxonomy, content-addressed images, benchmarks and their items.

CREATE TABLE categories (
    code  TEXT PRIMARY KEY,
    name  TEXT NOT NULL,
    taxonomy TEXT NOT NULL DEFAULT 'elite'
);
INSERT INTO categories (code, name) VALUES
    ('S1', 'Violent Crimes'), ('S2', 'Non-Violent Crimes'), ('S3', 'Sex Crimes'), ('S4', 'Defamation'),
    ('S5', 'Specialized Advice'), ('S6', 'Privacy'), ('S7', 'Intellectual Property'),
    ('S8', 'Indiscriminate Weapons'), ('S9', 'Hate'), ('S10', 'Suicide & Self-Harm'), ('S11', 'Sexual Content');

-- Images by the SHA-256 of their bytes; decoded once at import (with limits) for their size.
CREATE TABLE images (
    sha256     TEXT PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    data       BYTEA NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    format     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE benchmarks (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    version     INTEGER NOT NULL,
    source      TEXT NOT NULL,
    report      JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE TABLE items (
    id              BIGSERIAL PRIMARY KEY,
    benchmark_id    BIGINT NOT NULL REFERENCES benchmarks(id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    category_code   TEXT NOT NULL REFERENCES categories(code),
    text            TEXT NOT NULL,
    image_name      TEXT,
    image_sha256    TEXT REFERENCES images(sha256),
    -- 'ok' (image stored), 'missing' or 'unreadable' (runs skip the item visibly)
    image_status    TEXT NOT NULL CHECK (image_status IN ('ok', 'missing', 'unreadable')),
    source_dataset  TEXT,
    pair_type       TEXT,
    line            INTEGER,
    UNIQUE (benchmark_id, position)
);
CREATE INDEX items_benchmark_category ON items(benchmark_id, category_code);
