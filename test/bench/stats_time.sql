-- Row 10 (test/bench/observability.sh): times a read on the server.
--
-- bench_time(sql, n, warm, ids) runs sql warm + n times in this session
-- and returns the median, the 95th percentile and the largest of the last
-- n times, in milliseconds, and the rows the last execution returned.
-- Each execution is a dynamic EXECUTE, so it is planned every time, as an
-- ad-hoc query from psql or a dashboard is; every row is fetched (FOR
-- over the query), so the whole answer is computed.  With ids, execution
-- i passes ids[i] (cycling) as $1, so lookups by id do not read the same
-- task each time.  The time runs from before the EXECUTE to after the
-- last row: no client round trip, no network.
CREATE FUNCTION bench_time(sql text, n integer, warm integer, ids bigint[] DEFAULT NULL)
    RETURNS TABLE (p50 double precision, p95 double precision, max double precision, nrows bigint)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t0 timestamptz;
    ms double precision[] := '{}';
    r record;
    k bigint;
BEGIN
    FOR i IN 1 .. warm + n LOOP
        k := 0;
        t0 := clock_timestamp();
        IF ids IS NULL THEN
            FOR r IN EXECUTE sql LOOP
                k := k + 1;
            END LOOP;
        ELSE
            FOR r IN EXECUTE sql USING ids[1 + (i - 1) % cardinality(ids)] LOOP
                k := k + 1;
            END LOOP;
        END IF;
        IF i > warm THEN
            ms := ms || (extract(epoch FROM clock_timestamp() - t0) * 1000)::double precision;
        END IF;
    END LOOP;
    RETURN QUERY
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY m),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY m), max(m), k
          FROM unnest(ms) m;
END
$$;
