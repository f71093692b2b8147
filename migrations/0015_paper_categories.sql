-- The ELITE paper's per-category E-ASR figures (Table 3), loaded by an admin from their own
-- copy of the paper: they are not in our specification, so the platform ships without them.
-- One load replaces the whole table; every row records where its figures came from.
CREATE TABLE paper_category_figures (
    paper_model   TEXT NOT NULL CHECK (length(paper_model) BETWEEN 1 AND 100),
    category      TEXT NOT NULL CHECK (category ~ '^S([1-9]|1[01])$'),
    e_asr_percent DOUBLE PRECISION NOT NULL CHECK (e_asr_percent >= 0 AND e_asr_percent <= 100),
    provenance    TEXT NOT NULL CHECK (length(provenance) BETWEEN 1 AND 500),
    loaded_by     BIGINT REFERENCES users(id) ON DELETE SET NULL,
    loaded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (paper_model, category)
);
