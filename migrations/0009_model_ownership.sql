-- Model ownership and run snapshots (security hardening).
-- Every change of a registered model keeps the spec it replaced, who changed it and when.
CREATE TABLE model_revisions (
    id          BIGSERIAL PRIMARY KEY,
    model_id    BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    spec        JSONB NOT NULL,
    changed_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX model_revisions_model ON model_revisions(model_id, changed_at DESC);

-- The specs a run (target, judge, fallback judge) and each later evaluation (its judges) were
-- started with, by model name: jobs load these, so changing the registry never changes what
-- an existing run means.
ALTER TABLE runs ADD COLUMN model_specs JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE run_evaluations ADD COLUMN model_specs JSONB NOT NULL DEFAULT '{}'::jsonb;
