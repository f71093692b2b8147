-- Compression experiments: pruned-model accuracy against parameters and FLOPs (MACs), from
-- our jobs or imported from runs made elsewhere.
CREATE TABLE compression_experiments (
    id                  BIGSERIAL PRIMARY KEY,
    source              TEXT NOT NULL CHECK (source IN ('job', 'import')),
    architecture        TEXT NOT NULL,
    dataset             TEXT NOT NULL,
    method              TEXT NOT NULL,
    ratio               DOUBLE PRECISION NOT NULL,
    params_before       BIGINT,
    params_after        BIGINT,
    macs_before         BIGINT,
    macs_after          BIGINT,
    param_reduction     DOUBLE PRECISION NOT NULL,
    mac_reduction       DOUBLE PRECISION NOT NULL,
    accuracy_before     DOUBLE PRECISION,
    accuracy_pruned     DOUBLE PRECISION,
    accuracy_fine_tuned DOUBLE PRECISION,
    fine_tune_epochs    INTEGER NOT NULL DEFAULT 0,
    seconds             DOUBLE PRECISION,
    notes               TEXT NOT NULL DEFAULT '',
    details             JSONB NOT NULL DEFAULT '{}'::jsonb,
    job_id              BIGINT UNIQUE REFERENCES jobs(id) ON DELETE SET NULL,
    created_by          BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (accuracy_pruned IS NOT NULL OR accuracy_fine_tuned IS NOT NULL)
);
CREATE INDEX compression_experiments_method ON compression_experiments(method, ratio);
