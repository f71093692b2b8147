-- Evaluations beyond a run's first: any number of evaluators (judge + template + threshold,
-- optionally a fallback judge) grade the same stored responses, and a researcher's manual
-- verdict is kept beside the automatic score, never replacing it.

ALTER TABLE evaluators ADD COLUMN fallback_judge TEXT NOT NULL DEFAULT '';
ALTER TABLE evaluators DROP CONSTRAINT evaluators_judge_name_fingerprint_threshold_key;
ALTER TABLE evaluators ADD CONSTRAINT evaluators_identity
    UNIQUE (judge_name, fingerprint, threshold, fallback_judge);

-- Which judge produced a judgement (the evaluator's judge or its fallback).
ALTER TABLE judgements ADD COLUMN judged_by TEXT;

CREATE TABLE run_evaluations (
    run_id        BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    evaluator_id  BIGINT NOT NULL REFERENCES evaluators(id) ON DELETE CASCADE,
    created_by    BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, evaluator_id)
);
INSERT INTO run_evaluations (run_id, evaluator_id)
    SELECT id, evaluator_id FROM runs WHERE evaluator_id IS NOT NULL;

CREATE TABLE judgement_overrides (
    id           BIGSERIAL PRIMARY KEY,
    response_id  BIGINT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    user_id      BIGINT REFERENCES users(id) ON DELETE SET NULL,
    is_unsafe    BOOLEAN NOT NULL,
    comment      TEXT NOT NULL CHECK (length(comment) BETWEEN 1 AND 4000),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX judgement_overrides_response ON judgement_overrides(response_id, created_at DESC);
