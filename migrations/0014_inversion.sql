-- Model inversion (DeepInversion, NaturalInversion): images synthesised from a trained
-- teacher. The teacher is stored with the set (so its images, their scores and the pruned
-- networks repaired on them all refer to one network), batches are stored once each, and
-- images keep both a PNG for viewing and their raw tensor for reuse.
CREATE TABLE inversions (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    method           TEXT NOT NULL CHECK (method IN ('deep', 'natural')),
    spec             JSONB NOT NULL,
    teacher          BYTEA,
    teacher_label    TEXT NOT NULL DEFAULT '',
    teacher_accuracy DOUBLE PRECISION,
    -- The teacher's input normalisation and whether its data allow flips, recorded with it.
    normalization    JSONB,
    flip_invariant   BOOLEAN NOT NULL DEFAULT false,
    created_by       BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE inversion_batches (
    inversion_id BIGINT NOT NULL REFERENCES inversions(id) ON DELETE CASCADE,
    batch        INTEGER NOT NULL CHECK (batch >= 0),
    result       JSONB NOT NULL,
    job_id       BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (inversion_id, batch)
);

CREATE TABLE inversion_images (
    inversion_id BIGINT NOT NULL REFERENCES inversions(id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL CHECK (idx >= 0),
    label        INTEGER NOT NULL,
    predicted    INTEGER NOT NULL,
    probability  REAL NOT NULL,
    png          BYTEA NOT NULL,
    -- f32 little-endian, C x H x W, in the teacher's normalised input space.
    pixels       BYTEA NOT NULL,
    PRIMARY KEY (inversion_id, idx)
);

-- PP&PR of a set against the teacher's real training images, per encoder.
CREATE TABLE inversion_scores (
    inversion_id BIGINT NOT NULL REFERENCES inversions(id) ON DELETE CASCADE,
    encoder      TEXT NOT NULL,
    result_id    BIGINT NOT NULL REFERENCES ppr_results(id) ON DELETE CASCADE,
    PRIMARY KEY (inversion_id, encoder)
);
