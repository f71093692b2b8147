-- Judge panels: an evaluator of kind 'panel' combines two to five member evaluators (ordinary
-- judges sharing the panel's template, threshold and fallback judge). Each member stores its
-- own judgements as before (so the judgement cache keeps working per judge); the panel stores
-- one combined judgement per response under its own id, with the combined rubric values and
-- the votes in `judgements.combined`.

ALTER TABLE evaluators ADD COLUMN kind TEXT NOT NULL DEFAULT 'judge'
    CHECK (kind IN ('judge', 'panel'));
-- How the members' scores are combined ('mean' or 'median'); empty for a single judge.
ALTER TABLE evaluators ADD COLUMN combine TEXT NOT NULL DEFAULT ''
    CHECK (combine IN ('', 'mean', 'median'));
-- The member evaluators, in panel order; empty for a single judge.
ALTER TABLE evaluators ADD COLUMN members BIGINT[] NOT NULL DEFAULT '{}';
ALTER TABLE evaluators ADD CONSTRAINT evaluators_panel_shape CHECK (
    (kind = 'judge' AND combine = '' AND cardinality(members) = 0)
    OR (kind = 'panel' AND combine <> '' AND cardinality(members) BETWEEN 2 AND 5));
ALTER TABLE evaluators DROP CONSTRAINT evaluators_identity;
ALTER TABLE evaluators ADD CONSTRAINT evaluators_identity
    UNIQUE (kind, judge_name, fingerprint, threshold, fallback_judge, combine, members);

-- A panel's combined judgement (`panel::CombinedJudgement`); NULL for a single judge's.
ALTER TABLE judgements ADD COLUMN combined JSONB;
