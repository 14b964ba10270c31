"""The database schema as numbered migrations (applied in order, recorded in `schema_version`).

Tables hold what charter writes; the contract's user-facing names (`runs`, `calls`, `revisions`,
`sft_examples`, ...) are these tables or views over them. Add a migration, never edit an old one:
users' existing database files must keep opening.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import duckdb

# A migration is SQL, or a function of the connection that returns the SQL to run (for a step that
# depends on what the file's storage format can hold).
Migration = str | Callable[[duckdb.DuckDBPyConnection], str]


def _storage_version(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """The storage format of the open file as (major, minor); (0, 0) where DuckDB does not say."""
    row = con.execute(
        "SELECT tags FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    tags = row[0] if row and isinstance(row[0], dict) else {}
    found = re.match(r"v(\d+)\.(\d+)", str(tags.get("storage_version", "")))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _compress_call_texts(con: duckdb.DuckDBPyConnection) -> str:
    """7: `calls.request`, `responses` and `logprobs` compressed with ZSTD.

    Each label request repeats its few-shot examples (~4 KB); DuckDB's default string compression
    (dictionary + FSST) spent ~0.1 s of every 1,500-call run's closing checkpoint on them and left
    the file twice the size ZSTD does. ZSTD needs storage format v1.2 or later (an older file refuses
    the table): such a file keeps its `calls` as they are. DuckDB cannot change a column's
    compression in place, so the table is rebuilt, its rows copied by name.
    """
    if _storage_version(con) < (1, 2):
        return ""
    return """
    CREATE TABLE calls_zstd (
        call_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        step VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        cache_key VARCHAR NOT NULL,
        request JSON USING COMPRESSION zstd NOT NULL,
        response_text VARCHAR,
        responses JSON USING COMPRESSION zstd,
        logprobs JSON USING COMPRESSION zstd,
        prompt_tokens BIGINT,
        completion_tokens BIGINT,
        cost_usd DOUBLE,
        latency_ms DOUBLE,
        attempts INTEGER,
        error VARCHAR,
        cached BOOLEAN NOT NULL DEFAULT false,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    INSERT INTO calls_zstd BY NAME SELECT * FROM calls;
    DROP INDEX calls_cache_key;
    DROP TABLE calls;
    ALTER TABLE calls_zstd RENAME TO calls;
    CREATE INDEX calls_cache_key ON calls (cache_key);
    """


MIGRATIONS: list[Migration] = [
    # 1: SL-CAI core.
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        command VARCHAR NOT NULL,
        config JSON,
        started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        finished_at TIMESTAMP,
        status VARCHAR NOT NULL DEFAULT 'running'
    );
    CREATE TABLE calls (
        call_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        step VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        cache_key VARCHAR NOT NULL,
        request JSON NOT NULL,
        response_text VARCHAR,
        responses JSON,
        logprobs JSON,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd DOUBLE,
        latency_ms DOUBLE,
        attempts INTEGER,
        error VARCHAR,
        cached BOOLEAN NOT NULL DEFAULT false,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE INDEX calls_cache_key ON calls (cache_key);
    CREATE TABLE prompts (
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        prompt VARCHAR NOT NULL,
        messages JSON NOT NULL,
        PRIMARY KEY (run_id, prompt_id)
    );
    CREATE TABLE responses (
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        response VARCHAR NOT NULL,
        call_id VARCHAR,
        PRIMARY KEY (run_id, prompt_id)
    );
    CREATE TABLE revisions (
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        round INTEGER NOT NULL,
        principle VARCHAR NOT NULL,
        critique_request VARCHAR NOT NULL,
        critique VARCHAR NOT NULL,
        revision_request VARCHAR NOT NULL,
        revision VARCHAR NOT NULL,
        needs_revision BOOLEAN NOT NULL,
        critique_call_id VARCHAR,
        revision_call_id VARCHAR,
        PRIMARY KEY (run_id, prompt_id, round)
    );
    CREATE TABLE sft_examples (
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        prompt VARCHAR NOT NULL,
        completion VARCHAR NOT NULL,
        messages JSON NOT NULL,
        init_prompt VARCHAR NOT NULL,
        init_response VARCHAR NOT NULL,
        critic_prompt VARCHAR,
        critic_response VARCHAR,
        revision_prompt VARCHAR,
        revision_response VARCHAR,
        PRIMARY KEY (run_id, prompt_id)
    );
    CREATE TABLE training_runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        out_dir VARCHAR NOT NULL,
        train_rows INTEGER,
        config JSON,
        metrics JSON,
        started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        finished_at TIMESTAMP,
        status VARCHAR NOT NULL DEFAULT 'running'
    );
    -- Reward-model scores of policy samples before and after RL (written by trainers).
    CREATE TABLE policy_samples (
        training_run_id VARCHAR NOT NULL,
        stage VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        prompt VARCHAR NOT NULL,
        response VARCHAR NOT NULL,
        reward DOUBLE,
        PRIMARY KEY (training_run_id, stage, prompt_id)
    );
    """,
    # 2: RL-CAI - sampled responses, the pairs made from them, and their AI-feedback labels.
    """
    CREATE TABLE samples (
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        sample_index INTEGER NOT NULL,
        response VARCHAR NOT NULL,
        call_id VARCHAR,
        choice_index INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, prompt_id, sample_index)
    );
    CREATE TABLE pairs (
        pair_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        index_a INTEGER NOT NULL,
        index_b INTEGER NOT NULL,
        response_a VARCHAR NOT NULL,
        response_b VARCHAR NOT NULL,
        source_run_id VARCHAR
    );
    CREATE INDEX pairs_run ON pairs (run_id);
    -- One row per labeled pair and label run (status 'ok', or 'unparsed' with NULL probabilities).
    CREATE TABLE pair_labels (
        run_id VARCHAR NOT NULL,
        pair_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        principle VARCHAR NOT NULL,
        prob_a DOUBLE,
        prob_b DOUBLE,
        prob_a_unclamped DOUBLE,
        reasoning VARCHAR,
        label_source VARCHAR,
        status VARCHAR NOT NULL,
        raw_text VARCHAR,
        call_ids VARCHAR[],
        PRIMARY KEY (run_id, pair_id)
    );
    -- Every feedback query behind a label: ensemble member, option order, attempt, call, reading.
    CREATE TABLE feedback_queries (
        run_id VARCHAR NOT NULL,
        pair_id VARCHAR NOT NULL,
        member INTEGER NOT NULL,
        principle VARCHAR NOT NULL,
        swapped BOOLEAN NOT NULL,
        kind VARCHAR NOT NULL,
        attempt INTEGER NOT NULL,
        call_id VARCHAR,
        reasoning_call_id VARCHAR,
        text VARCHAR,
        answer VARCHAR,
        prob_a DOUBLE,
        label_source VARCHAR,
        PRIMARY KEY (run_id, pair_id, member, swapped, kind, attempt)
    );
    """,
    # 3: the evidence behind each feedback query's reading (issue 9): where the option letter was
    # read, the token generated there and both options' probability mass there before normalising;
    # for chain of thought the answer the reasoning stated, whether a re-ask contradicted it, and
    # which of the --cot-samples samples the query is; the label's number of CoT samples.
    """
    ALTER TABLE feedback_queries ADD COLUMN answer_position INTEGER;
    ALTER TABLE feedback_queries ADD COLUMN answer_token VARCHAR;
    ALTER TABLE feedback_queries ADD COLUMN option_mass DOUBLE;
    ALTER TABLE feedback_queries ADD COLUMN stated_answer VARCHAR;
    ALTER TABLE feedback_queries ADD COLUMN contradicts BOOLEAN;
    ALTER TABLE feedback_queries ADD COLUMN cot_sample INTEGER;
    ALTER TABLE pair_labels ADD COLUMN cot_samples INTEGER;
    """,
    # 4: evaluations - one row per evaluated comparison (`charter eval`), the view eval_results.
    """
    CREATE TABLE eval_items (
        run_id VARCHAR NOT NULL,
        eval VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        correct_option VARCHAR NOT NULL,
        prob_correct DOUBLE,
        correct BOOLEAN,
        status VARCHAR NOT NULL,
        label_source VARCHAR,
        call_ids VARCHAR[],
        PRIMARY KEY (run_id, item_id)
    );
    """,
    # 5: token counts as BIGINT (a server reporting 2**40 tokens must not make a whole flush fail),
    # and each run's item total and where its finished items are counted.
    # DuckDB cannot alter a column of an indexed table, so the index is dropped and rebuilt.
    """
    DROP INDEX calls_cache_key;
    ALTER TABLE calls ALTER prompt_tokens TYPE BIGINT;
    ALTER TABLE calls ALTER completion_tokens TYPE BIGINT;
    CREATE INDEX calls_cache_key ON calls (cache_key);
    -- What `charter status` measures a run's progress against.
    ALTER TABLE runs ADD COLUMN total_items BIGINT;
    ALTER TABLE runs ADD COLUMN done_table VARCHAR;
    ALTER TABLE runs ADD COLUMN done_column VARCHAR;
    """,
    # 6: provider batch APIs (`--batch`): each submission of a run (its batch id, files and status
    # as last seen) and the requests it carries, by custom_id (the request cache key). Written
    # before the upload, so a run killed while a batch is out waits on it instead of resubmitting.
    """
    CREATE TABLE batch_jobs (
        submission_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        batch_id VARCHAR,
        endpoint VARCHAR NOT NULL,
        api_base VARCHAR,
        input_file_id VARCHAR,
        output_file_id VARCHAR,
        error_file_id VARCHAR,
        status VARCHAR NOT NULL,
        requests BIGINT NOT NULL,
        completed BIGINT,
        failed BIGINT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        updated_at TIMESTAMP
    );
    CREATE TABLE batch_requests (
        submission_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        custom_id VARCHAR NOT NULL,
        PRIMARY KEY (submission_id, custom_id)
    );
    """,
    _compress_call_texts,
]
