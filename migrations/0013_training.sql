-- Training recipes (GuidedMixup, Catch-up Mix, MPVG and their baselines): an experiment is
-- recipes x seeds under one stored specification; each (recipe, seed) is one job and one run.
CREATE TABLE training_experiments (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    family      TEXT NOT NULL CHECK (family IN ('cnn', 'vit')),
    spec        JSONB NOT NULL,
    created_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE training_runs (
    id             BIGSERIAL PRIMARY KEY,
    experiment_id  BIGINT NOT NULL REFERENCES training_experiments(id) ON DELETE CASCADE,
    recipe         TEXT NOT NULL,
    seed           BIGINT NOT NULL,
    result         JSONB NOT NULL,
    job_id         BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, recipe, seed)
);
