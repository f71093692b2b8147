-- The model registry: targets and judges, local (candle) or remote (OpenAI-compatible).
-- `spec` holds the inference::ModelSpec as JSON; API keys are never stored, only the name of
-- the environment variable that holds one.
CREATE TABLE models (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    adapter     TEXT NOT NULL,
    spec        JSONB NOT NULL,
    created_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
