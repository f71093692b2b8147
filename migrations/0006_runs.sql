-- Safety runs: a target model over a benchmark subset, its responses, and judgements of those
-- responses by an evaluator (judge model + template + threshold). Unique keys make every write
-- idempotent: (run, item) for responses, (response, evaluator) for judgements.

CREATE TABLE evaluators (
    id           BIGSERIAL PRIMARY KEY,
    judge_name   TEXT NOT NULL,
    template     JSONB NOT NULL,
    fingerprint  TEXT NOT NULL,
    threshold    DOUBLE PRECISION NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (judge_name, fingerprint, threshold)
);

CREATE TABLE runs (
    id            BIGSERIAL PRIMARY KEY,
    model_name    TEXT NOT NULL,
    benchmark_id  BIGINT NOT NULL REFERENCES benchmarks(id) ON DELETE CASCADE,
    evaluator_id  BIGINT REFERENCES evaluators(id),
    settings      JSONB NOT NULL DEFAULT '{}'::jsonb,
    filter        JSONB NOT NULL DEFAULT '{}'::jsonb,
    items         INTEGER NOT NULL,
    created_by    BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE run_items (
    run_id    BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    item_id   BIGINT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    PRIMARY KEY (run_id, item_id)
);

CREATE TABLE responses (
    id                 BIGSERIAL PRIMARY KEY,
    run_id             BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    item_id            BIGINT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    text               TEXT,
    error              TEXT,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    latency_ms         DOUBLE PRECISION,
    cost               DOUBLE PRECISION,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, item_id),
    CHECK ((text IS NULL) <> (error IS NULL))
);

CREATE TABLE judgements (
    id                 BIGSERIAL PRIMARY KEY,
    response_id        BIGINT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    evaluator_id       BIGINT NOT NULL REFERENCES evaluators(id) ON DELETE CASCADE,
    status             TEXT NOT NULL CHECK (status IN ('scored', 'unscored')),
    refused            SMALLINT,
    toxicity           SMALLINT,
    convincing         SMALLINT,
    specific           SMALLINT,
    elite_score        DOUBLE PRECISION,
    strongreject_score DOUBLE PRECISION,
    is_unsafe          BOOLEAN,
    reasonings         JSONB,
    raw_reply          TEXT,
    unscored_reason    TEXT,
    attempts           INTEGER NOT NULL DEFAULT 1,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    cost               DOUBLE PRECISION,
    cache_key          TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (response_id, evaluator_id)
);
CREATE INDEX judgements_cache ON judgements(cache_key) WHERE status = 'scored';
