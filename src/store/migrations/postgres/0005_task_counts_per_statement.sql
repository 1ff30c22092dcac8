-- Creates arrive in batches, many rows in one INSERT (src/store/postgres/creates.rs): the
-- counters follow an INSERT once per statement, one update per status of its rows, where
-- a row trigger updated the same counter row once per row. Updates and deletes keep the
-- row trigger (one row at a time anyway).
DROP TRIGGER task_counts_insert_delete ON tasks;
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_follow();

CREATE FUNCTION task_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_slot SMALLINT := pg_backend_pid() % 16;
    s RECORD;
BEGIN
    -- One update per status, in status order as the row trigger locks them: two backends
    -- sharing a slot must not lock the same two rows in opposite orders.
    FOR s IN SELECT status, COUNT(*) AS n, SUM(input_tokens) AS input_tokens,
                    SUM(output_tokens) AS output_tokens, SUM(cost_usd) AS cost_usd
             FROM inserted GROUP BY status ORDER BY status
    LOOP
        UPDATE task_counts SET n = n + s.n, input_tokens = input_tokens + s.input_tokens,
            output_tokens = output_tokens + s.output_tokens, cost_usd = cost_usd + s.cost_usd
        WHERE status = s.status AND slot = my_slot;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_inserted();
