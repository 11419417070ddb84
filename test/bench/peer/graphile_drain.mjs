// graphile_drain.mjs C N: graphile-worker draining N no-op jobs queued
// beforehand, with C concurrent jobs.  Run by graphile.sh, which installs
// the package, sets NO_LOG_SUCCESS and PGDATABASE (with PGHOST, PGPORT and
// PGUSER from the caller) and drops the schema graphile_worker; see there
// for what is measured.  Prints the one result line on stdout, everything
// else on stderr; exits 1 on any failure.
//
// The options are graphile-worker's own throughput preset, from its docs
// (website/docs/performance.md, "Batching"; the option names from
// website/docs/config.md and, for this version, dist/main.js and
// dist/lib.js of the installed package):
//
//	concurrentJobs C, localQueue { size: C + 1 }, completeJobBatchDelay 250,
//	failJobBatchDelay 250, pollInterval left at its default (2000 ms),
//	maxPoolSize max(10, C + 2) (config.md: "we recommend setting it to 10
//	or concurrentJobs + 2, whichever is larger"; below C it warns of
//	non-optimal performance), the task `noop: async () => {}`.
//
// NO_LOG_SUCCESS=1, as graphile-worker's own perfTest sets, spares one
// info log line per job; it must be set before the package is loaded,
// hence the dynamic import.

import { EventEmitter } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const TIMEOUT_MS = 600_000; // give up on a drain after 10 minutes
const POLL_MS = 10; // the table count, once every job has run (as drain.sh polls tq)

function fail(msg) {
	console.error(`graphile_drain: ${msg}`);
	process.exit(1);
}

const [c, n] = process.argv.slice(2).map((a) => Number(a));
if (!(Number.isInteger(c) && c > 0 && Number.isInteger(n) && n > 0)) {
	fail("usage: graphile_drain.mjs C N (positive integers)");
}

process.env.NO_LOG_SUCCESS = "1";
// stdout carries the result line alone.
// The server's CPU seconds (utime + stime of the postmaster, its reaped
// children and its live children, from /proc), when TQ_PEER_PM_PID names
// the postmaster: drain.sh's server CPU per task covers the drain alone.
function serverCpu() {
	const pm = process.env.TQ_PEER_PM_PID;
	if (!pm) {
		return null;
	}
	const hz = 100; // USER_HZ on Linux
	let t = 0;
	for (const p of readdirSync("/proc")) {
		if (!/^[0-9]+$/.test(p)) {
			continue;
		}
		let f;
		try {
			f = readFileSync(`/proc/${p}/stat`, "utf8");
		} catch {
			continue; // ended meanwhile: its time is in the postmaster's
		}
		const x = f.slice(f.lastIndexOf(")") + 2).split(" ");
		// x[1]: ppid; x[11], x[12]: utime, stime; x[13], x[14]: reaped children's
		if (p === pm) {
			t += +x[11] + +x[12] + +x[13] + +x[14];
		} else if (x[1] === pm) {
			t += +x[11] + +x[12];
		}
	}
	return t / hz;
}

console.log = console.error;
console.info = console.error;
const { run, makeWorkerUtils, Logger } = await import("graphile-worker");
const version = JSON.parse(
	readFileSync(new URL("./node_modules/graphile-worker/package.json", import.meta.url), "utf8"),
).version;

// graphile-worker's log, on stderr, without debug.
const logger = new Logger((scope) => (level, message) => {
	if (level !== "debug") {
		console.error(`graphile-worker ${level}: ${message}`);
	}
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The schema (the caller dropped it): the migrations, by the library.
// The same utils (their own pool, not the runner's) queue the jobs and
// poll the table.
const utils = await makeWorkerUtils({ logger });
const q = (sql, args) => utils.withPgClient((client) => client.query(sql, args));
const remaining = async () =>
	Number((await q("SELECT count(*) AS n FROM graphile_worker._private_jobs")).rows[0].n);

let runner = null;
try {
	const syncCommit = (await q("SHOW synchronous_commit")).rows[0].synchronous_commit;

	// Queue N jobs in one add_jobs call (website/docs/sql-add-job.md,
	// graphile_worker.add_jobs; the array built as perfTest/init.js does).
	const added = Number(
		(
			await q(
				`SELECT count(*) AS n FROM graphile_worker.add_jobs(ARRAY(
				   SELECT json_populate_record(null::graphile_worker.job_spec,
				            json_build_object('identifier', 'noop', 'payload', '{}'::json))
				     FROM generate_series(1, $1::int)))`,
				[n],
			)
		).rows[0].n,
	);
	if (added !== n || (await remaining()) !== n) {
		throw new Error(`queued ${added} jobs, wanted ${n}`);
	}
	// As drain.sh prepares tq's drain: fresh statistics, no checkpoint due.
	await q("VACUUM ANALYZE graphile_worker._private_jobs");
	await q("CHECKPOINT");

	const events = new EventEmitter();
	let succeeded = 0;
	let problems = [];
	let allRan;
	const allRanP = new Promise((resolve) => (allRan = resolve));
	events.on("job:success", () => {
		if (++succeeded === n) {
			allRan(performance.now());
		}
	});
	for (const ev of ["job:error", "job:failed", "worker:fatalError", "pool:fatalError"]) {
		events.on(ev, ({ job, error }) => {
			problems.push(`${ev}${job ? ` job ${job.id}` : ""}: ${error}`);
			allRan(null);
		});
	}
	const preset = {
		worker: {
			concurrentJobs: c,
			maxPoolSize: Math.max(10, c + 2),
			localQueue: { size: c + 1 },
			completeJobBatchDelay: 250,
			failJobBatchDelay: 250,
		},
	};

	// The clock runs from calling run() (connecting, the migration check,
	// starting the pool: what starting the worker costs) to the first poll
	// that finds graphile_worker._private_jobs empty.  graphile-worker
	// deletes a job from that table when it writes its completion, and with
	// completeJobBatchDelay those writes are batched: job:success (and,
	// despite its documentation, job:complete) fire before the completion
	// is written.  So counting events alone would stop the clock up to
	// 250 ms plus one round trip early, and stopping the runner at that
	// point would flush the last batch at once, sooner than a running
	// worker does; neither is what a user of this preset sees.  The runner
	// keeps running until the table is empty; then it is stopped
	// gracefully, outside the clock, and the table checked again.  The
	// table is polled only once every job has run, so the polling adds
	// nothing to the drain itself.
	const cpu0 = serverCpu();
	const t0 = performance.now();
	runner = await run({
		taskList: { noop: async () => {} },
		parsedCronItems: [],
		events,
		logger,
		preset,
	});
	runner.promise.catch((e) => problems.push(`runner: ${e}`));
	let timer;
	const timeout = new Promise((resolve) => (timer = setTimeout(resolve, TIMEOUT_MS)));
	const ranAt = await Promise.race([allRanP, timeout]);
	clearTimeout(timer);
	if (ranAt === undefined) {
		throw new Error(`${n - succeeded} of ${n} jobs not run after ${TIMEOUT_MS / 1000} s`);
	}
	if (ranAt === null) {
		throw new Error(problems.join("; "));
	}
	let left;
	while ((left = await remaining()) !== 0) {
		if (performance.now() - t0 > TIMEOUT_MS) {
			throw new Error(`${left} jobs left in the table after ${TIMEOUT_MS / 1000} s`);
		}
		await sleep(POLL_MS);
	}
	const t1 = performance.now();
	const cpu1 = serverCpu();

	const s0 = performance.now();
	await runner.stop();
	await runner.promise;
	runner = null;
	const stopMs = performance.now() - s0;
	left = await remaining();
	if (problems.length > 0 || left !== 0 || succeeded !== n) {
		throw new Error(
			`after the drain: ${succeeded} of ${n} jobs succeeded, ${left} left in the table` +
				(problems.length > 0 ? `; ${problems.join("; ")}` : ""),
		);
	}

	const secs = (t1 - t0) / 1000;
	console.error(
		`graphile_drain: c=${c} n=${n}: last job ran at ${((ranAt - t0) / 1000).toFixed(3)} s, ` +
			`table empty at ${secs.toFixed(3)} s; stop took ${stopMs.toFixed(0)} ms`,
	);
	process.stdout.write(
		`graphile-worker ${version} c=${c} n=${n} secs=${secs.toFixed(3)} ` +
			`rate=${Math.round(n / secs)} synchronous_commit=${syncCommit}` +
			(cpu0 !== null && cpu1 !== null ? ` server_cpu_s=${(cpu1 - cpu0).toFixed(2)}` : "") +
			"\n",
	);
} catch (e) {
	console.error(`graphile_drain: c=${c} n=${n}: ${e && e.stack ? e.stack : e}`);
	process.exitCode = 1;
} finally {
	if (runner) {
		await runner.stop().catch(() => {});
	}
	await utils.release();
}
// Nothing of ours is left running; should the library leave a handle
// open, the result still stands.
process.exit(process.exitCode ?? 0);
