-- Human annotation: queues of responses to label, their annotators, the labels, and labels
-- imported from elsewhere (queue_id NULL). Blind assignment is served from annotation_items
-- ordered by (label_count DESC, position); label_count counts verdicts (not skips or flags).

CREATE TABLE annotation_queues (
    id                  BIGSERIAL PRIMARY KEY,
    name                TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    label_schema        TEXT NOT NULL CHECK (label_schema IN ('binary', 'rubric')),
    annotators_per_item INTEGER NOT NULL CHECK (annotators_per_item >= 1),
    guideline           TEXT NOT NULL DEFAULT '',
    selection           JSONB NOT NULL DEFAULT '{}'::jsonb,
    seed                BIGINT NOT NULL DEFAULT 0,
    created_by          BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE annotation_queue_members (
    queue_id  BIGINT NOT NULL REFERENCES annotation_queues(id) ON DELETE CASCADE,
    user_id   BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (queue_id, user_id)
);
CREATE INDEX annotation_queue_members_user ON annotation_queue_members(user_id);

CREATE TABLE annotation_items (
    queue_id     BIGINT NOT NULL REFERENCES annotation_queues(id) ON DELETE CASCADE,
    response_id  BIGINT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    label_count  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, response_id),
    UNIQUE (queue_id, position)
);
-- "Next item": the open items of a queue, most labels first, then position.
CREATE INDEX annotation_items_next ON annotation_items(queue_id, label_count DESC, position);

CREATE TABLE annotation_labels (
    id                   BIGSERIAL PRIMARY KEY,
    queue_id             BIGINT REFERENCES annotation_queues(id) ON DELETE CASCADE,
    response_id          BIGINT NOT NULL REFERENCES responses(id) ON DELETE CASCADE,
    annotator_id         BIGINT REFERENCES users(id) ON DELETE SET NULL,
    annotator_pseudonym  TEXT,
    is_unsafe            BOOLEAN,
    rubric               JSONB,
    flagged              BOOLEAN NOT NULL DEFAULT FALSE,
    skipped              BOOLEAN NOT NULL DEFAULT FALSE,
    seconds_spent        DOUBLE PRECISION,
    source               TEXT NOT NULL CHECK (source IN ('annotator', 'import')),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (source = 'import' OR (queue_id IS NOT NULL AND annotator_id IS NOT NULL)),
    UNIQUE (queue_id, response_id, annotator_id)
);
CREATE INDEX annotation_labels_response ON annotation_labels(response_id);
CREATE INDEX annotation_labels_annotator ON annotation_labels(queue_id, annotator_id, id);
-- One imported label per (queue or none, response, pseudonym).
CREATE UNIQUE INDEX annotation_labels_imported
    ON annotation_labels(COALESCE(queue_id, 0), response_id, annotator_pseudonym) WHERE source = 'import';
