-- Imports and generation run as jobs (safety.import_items, safety.import_elite,
-- safety.generate_pairs). A benchmark version remembers the job that stored it, so a job that
-- runs again (its worker died after committing) finds its benchmark instead of adding another.
ALTER TABLE benchmarks ADD COLUMN job_id BIGINT UNIQUE;

-- What an import or generation job reads: the uploaded file or the generation request, kept
-- until the transaction that stores the benchmark deletes it.
CREATE TABLE safety_uploads (
    id          BIGSERIAL PRIMARY KEY,
    data        BYTEA NOT NULL,
    created_by  BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
