-- Generative-model metrics: embedding sets, PP&PR results, toy experiments.

CREATE TABLE embedding_sets (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description TEXT NOT NULL DEFAULT '',
    rows        INTEGER NOT NULL CHECK (rows > 0),
    dim         INTEGER NOT NULL CHECK (dim > 0),
    -- 'inline': the matrix is in `data` as raw little-endian f32, row-major.
    -- 'path': the matrix stays in a file on the server (big sets), read when used.
    storage     TEXT NOT NULL CHECK (storage IN ('inline', 'path')),
    path        TEXT,
    tensor      TEXT,
    data        BYTEA,
    sha256      BYTEA NOT NULL,
    created_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((storage = 'inline' AND data IS NOT NULL) OR (storage = 'path' AND path IS NOT NULL))
);
CREATE UNIQUE INDEX embedding_sets_inline_content ON embedding_sets(sha256) WHERE storage = 'inline';

CREATE TABLE ppr_results (
    id           BIGSERIAL PRIMARY KEY,
    real_set_id  BIGINT NOT NULL REFERENCES embedding_sets(id) ON DELETE CASCADE,
    fake_set_id  BIGINT NOT NULL REFERENCES embedding_sets(id) ON DELETE CASCADE,
    a            DOUBLE PRECISION NOT NULL,
    k            INTEGER NOT NULL,
    prdc_k       INTEGER NOT NULL,
    label        TEXT NOT NULL DEFAULT '',
    p_precision  DOUBLE PRECISION NOT NULL,
    p_recall     DOUBLE PRECISION NOT NULL,
    precision    DOUBLE PRECISION NOT NULL,
    recall       DOUBLE PRECISION NOT NULL,
    density      DOUBLE PRECISION NOT NULL,
    coverage     DOUBLE PRECISION NOT NULL,
    n_real       INTEGER NOT NULL,
    n_fake       INTEGER NOT NULL,
    dim          INTEGER NOT NULL,
    seconds      DOUBLE PRECISION NOT NULL,
    job_id       BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    created_by   BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (real_set_id, fake_set_id, a, k, prdc_k)
);

CREATE TABLE ppr_toy_runs (
    id          BIGSERIAL PRIMARY KEY,
    experiment  TEXT NOT NULL CHECK (experiment IN ('outlier', 'shift', 'std')),
    params      JSONB NOT NULL,
    series      JSONB NOT NULL,
    job_id      BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (job_id)
);
